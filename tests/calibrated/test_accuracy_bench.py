"""bench/accuracy.py: the claim check's verdicts, and one tiny model through the real code path
(held-out evaluation data, kv4 at head_dim groups, the table and the summary lines)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "accuracy.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_accuracy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _row(fmt: str, method: str, kl: float, bpw: float) -> dict:
    return {"format": fmt, "method": method, "kl_mean": kl, "bpw": bpw}


def test_claim_check_names_the_winner_and_the_bits():
    bench = _bench()
    rows = [_row("razer4", "rtn", 0.5, 4.5625), _row("razer4", "rotate+gptq", 0.3, 4.5625),
            _row("int4", "rotate+gptq", 0.2, 4.75), _row("int4-sym", "clip", 0.4, 4.5),
            _row("fp4", "rtn", 0.35, 4.5), _row("fp4", "kv4", 0.01, 4.5)]  # kv4 is not weight-only
    text = bench.claim_check(rows, "kl_mean")
    assert text == ("Claim check (KL): razer4 LOSES to int4 (int4: +0.188 b/w); beats "
                    "int4-sym (int4-sym: -0.062 b/w); beats fp4 (fp4: -0.062 b/w).")
    summary = bench.best_summary(rows, "kl_mean")
    assert summary.startswith("Best weight-only pipeline per format by KL, best first: int4 "
                              "(rotate+gptq, 0.2, 4.750 b/w), razer4 (rotate+gptq, 0.3, 4.562 b/w)")


def test_a_gap_inside_the_calibration_spread_is_a_tie():
    bench = _bench()
    rows = [{**_row("razer4", "clip", 0.40, 4.14), "spread": 0.02},
            {**_row("int4", "clip", 0.39, 4.19), "spread": 0.005},
            {**_row("fp4", "clip", 0.45, 4.125), "spread": 0.01}]
    assert bench.claim_check(rows, "kl_mean") == (
        "Claim check (KL): razer4 ties (behind by 0.01, less than the calibration spread 0.02) "
        "with int4 (int4: +0.050 b/w); beats fp4 (fp4: -0.015 b/w).")


def test_higher_cosine_wins():
    bench = _bench()
    rows = [{"format": "razer4", "method": "clip", "cosine_mean": 0.98, "bpw": 4.14},
            {"format": "fp4", "method": "clip", "cosine_mean": 0.97, "bpw": 4.125}]
    assert bench.claim_check(rows, "cosine_mean").endswith("razer4 beats fp4 (fp4: -0.015 b/w).")


def test_small_run_writes_the_table(tmp_path):
    out = tmp_path / "acc.md"
    bench = _bench()
    assert bench.main(["--models", "stories260k", "--formats", "razer4,int4-sym",
                       "--methods", "rtn,kv4", "--samples", "2", "--seq-len", "16",
                       "--seeds", "2", "--out", str(out)]) == 0
    text = out.read_text()
    assert "spread (2 seeds)" in text and "(no calibration)" in text  # rtn runs once
    assert "| razer4 | 32 | 4.562 | rtn |" in text and "| int4-sym | 32 | 4.500 | rtn |" in text
    assert "| razer4 | 32 | 4.562 | kv4 |" in text  # head_dim 8: razer4-kv groups of 8
    assert "quantize-kv{format=razer4}" in text and "error" not in text
    assert "Claim check (KL): razer4 " in text
    before = text
    out.write_text("")
    assert bench.main(["--render", "--out", str(out)]) == 0  # from acc.json, same table
    assert out.read_text() == before

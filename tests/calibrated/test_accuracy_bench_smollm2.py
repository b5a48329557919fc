"""bench/accuracy_smollm2.py on a tiny stand-in (stories260k with a character tokenizer): the
standard-perplexity scoring against qcompiler.evaluate, held-out seeded calibration, rows
saved after every task and skipped on resume, and the claims rendered from the saved rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import accuracy_smollm2 as bench  # noqa: E402
import smollm2_plan as plan  # noqa: E402
import smollm2_report as report  # noqa: E402


class CharTokenizer:
    """Characters to ids 3..258 of stories260k's 512-token vocabulary; BOS is id 1."""

    bos_token_id, bos_token = 1, "<s>"

    def __call__(self, text, return_tensors=None):
        ids = [self.bos_token_id] + [3 + (ord(c) % 256) for c in text]
        return {"input_ids": torch.tensor([ids])}


WORDS = "the cat sat on a mat and then it ran far away from home to see a big tree".split()


@pytest.fixture(scope="module")
def tiny():
    from qcompiler import zoo

    base = zoo.load("stories260k")
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (8,), generator=g))
             for _ in range(60)]
    return base, "\n".join(lines) + "\n"


ONLY = "razer4/rtn,fp4/rtn,razer4/gptq,fp4/w4a8"
ARGS = ["--window", "16", "--eval-windows", "3", "--calib-samples", "2", "--calib-seqlen",
        "16", "--seeds", "2", "--only", ONLY, "--no-cache"]


def test_runs_saves_resumes_and_renders_claims(tiny, tmp_path, monkeypatch):
    base, text = tiny
    (tmp_path / "wiki.txt").write_text(text)
    out = tmp_path / "acc.md"
    args = ARGS + ["--text", str(tmp_path / "wiki.txt"), "--out", str(out)]
    assert bench.main(args, load=base.clone, tokenizer=CharTokenizer()) == 0
    state = json.loads(out.with_suffix(".json").read_text())
    rows = state["rows"]
    assert state["eval_tokens"] == 3 * 15  # 3 windows of BOS + 15 tokens, all predicted
    assert len(rows["razer4|rtn||"]["runs"]) == 1 and rows["razer4|rtn||"]["runs"][0]["seed"] is None
    gptq = rows["razer4|gptq||"]["runs"]
    assert [r["seed"] for r in gptq] == [0, 1]  # one run per calibration seed
    assert rows["fp"]["runs"][0]["kl_mean"] == 0.0
    assert rows["fp4|w4a8|fp8-e4m3|"]["runs"] and rows["fp4|w4a8|int8|"]["runs"]
    assert not any("error" in r for r in rows.values())
    md = out.read_text()
    assert "Q4_1" in md and "PoT-3 with refinement beats INT3 (seed 001)" in md
    assert "not measured" in md  # e.g. AQAS vs SmoothQuant: its rows were not run
    assert "eval tokens: 45 (spec: at least 32000)" in md
    glance = md.split("## At a glance")[1].split("## Table")[0]
    razer = next(line for line in glance.splitlines() if line.startswith("| razer4 (64) |"))
    ppl = sum(r["perplexity"] for r in gptq) / 2
    assert razer.split(" | ")[3].startswith(f"{ppl:.2f} ±")  # rtn | gptq columns; 2 seeds

    # resume: every task is done, so nothing compiles again and the rows stay as they were
    monkeypatch.setattr(bench, "run_task", lambda *a: pytest.fail("resumed a finished task"))
    assert bench.main(args, load=base.clone, tokenizer=CharTokenizer()) == 0
    assert json.loads(out.with_suffix(".json").read_text())["rows"] == rows
    assert bench.main(["--render", "--seeds", "2", "--out", str(out)]) == 0
    assert out.read_text().split("Run:")[1].split("\n", 1)[1] == md.split("Run:")[1].split("\n", 1)[1]


def test_jobs_give_the_rows_of_one_process(tiny, tmp_path):
    """--jobs 2 (forked workers, units of rows sharing statistics) gives every row of the
    one-process run, with the same numbers (one torch thread in both: bit-equal here)."""
    base, text = tiny
    (tmp_path / "wiki.txt").write_text(text)
    common = ARGS + ["--text", str(tmp_path / "wiki.txt"), "--threads", "1"]
    one, two = tmp_path / "one.md", tmp_path / "two.md"
    assert bench.main(common + ["--out", str(one)], load=base.clone,
                      tokenizer=CharTokenizer()) == 0
    two_args = [a for a in common if a not in ("--threads", "1")] + ["--jobs", "2"]
    assert bench.main(two_args + ["--out", str(two)], load=base.clone,
                      tokenizer=CharTokenizer()) == 0
    rows1 = json.loads(one.with_suffix(".json").read_text())["rows"]
    rows2 = json.loads(two.with_suffix(".json").read_text())["rows"]
    assert rows1.keys() == rows2.keys()
    keys = ("seed", "perplexity", "kl_mean", "kl_p99", "top1")
    for key in rows1:
        got = sorted(tuple(r[k] for k in keys) for r in rows2[key]["runs"])
        want = sorted(tuple(r[k] for k in keys) for r in rows1[key]["runs"])
        assert got == want, key


def test_units_group_one_method_and_seed():
    gptq = [plan.Row("razer4", "gptq"), plan.Row("fp4", "gptq")]
    rtn = plan.Row("razer4", "rtn")
    todo = [(rtn, 0), (gptq[0], 0), (gptq[1], 0), (gptq[0], 1), (plan.Row("fp4", "clip"), 1)]
    assert [len(u) for u in bench.units(todo)] == [1, 2, 1, 1]


def test_score_matches_qcompiler_evaluate(tiny):
    """One forward per window gives the same perplexity, KL and top-1 as `qcompile eval`'s
    code (the fp log-probs are cached in float16: KL to 1e-2 relative, the rest exactly)."""
    from qcompiler.driver import compile
    from qcompiler.evaluate import compare
    from qcompiler.text_data import evaluation_windows

    base, text = tiny
    windows = evaluation_windows(text, CharTokenizer(), window=16, count=3).windows
    q = compile(base.clone(), pipeline=plan.Row("razer4", "rtn").pipeline, quiet=True).program
    ref = bench.reference_logprobs(base, windows, None)
    got = bench.score(q, windows, ref)
    want = compare(q, base, windows, kind="causal-lm", with_perplexity=True)
    assert got["perplexity"] == pytest.approx(want.perplexity, rel=1e-5)
    assert got["kl_mean"] == pytest.approx(want.kl_mean, rel=1e-2)
    assert got["top1"] == pytest.approx(want.top1_agreement, abs=1 / 45)
    fp = bench.fp_row(windows, ref)["runs"][0]["perplexity"]
    assert fp == pytest.approx(want.perplexity_reference, rel=1e-3)


def test_calibration_is_held_out_and_seeded(tiny):
    _, text = tiny
    tok = CharTokenizer()
    a = bench.calibration_batches(text, tok, 3, 16, seed=0)
    b = bench.calibration_batches(text, tok, 3, 16, seed=1)
    assert all(x.shape == (1, 16) and int(x[0, 0]) == 1 for x in a)
    assert [x.tolist() for x in a] != [x.tolist() for x in b]
    second_half = "".join(text.splitlines(keepends=True)[30:])
    ids = tok(second_half)["input_ids"][0, 1:].tolist()
    s = ",".join(map(str, ids))
    assert all(",".join(map(str, x[0, 1:].tolist())) in s for x in a)


def test_claim_verdicts_use_the_spread():
    def row(fmt, method, ppls, bpw=4.25):
        return {"format": fmt, "method": method, "bpw": bpw, "calibrated": len(ppls) > 1,
                "runs": [{"perplexity": p, "kl_mean": 0.1} for p in ppls]}

    assert report.compare(row("razer4", "gptq", [40, 41]), row("fp4", "gptq", [43, 44]))[0] == "held"
    assert report.compare(row("razer4", "gptq", [40, 42]), row("fp4", "gptq", [41, 41.5]))[0] == "tie"
    assert report.compare(row("razer4", "rtn", [45]), row("fp4", "rtn", [43]))[0] == "not held"
    assert report.compare(row("razer4", "awq", []), row("fp4", "rtn", [43]))[0] == "missing"
    assert report.overall(["held", "missing"]) == "HELD (where measured)"
    assert report.overall(["held", "not held"]) == "MIXED (held 1, tie 0, not held 1 of 2 measured)"
    assert report.overall(["held", "tie", "missing"]).startswith("HELD OR TIED (held 1, tie 1")

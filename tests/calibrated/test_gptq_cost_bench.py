"""bench/gptq_cost.py: one row per GPTQ variant, and the default's output error is the lowest."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import gptq_cost  # noqa: E402


def test_gptq_cost_bench_writes_every_variant(tmp_path):
    out = tmp_path / "cost.md"
    assert gptq_cost.main(["--rows", "64", "--k", "256", "--tokens", "256", "--out",
                           str(out)]) == 0
    text = out.read_text()
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")
            and not line.startswith("| variant") and not line.startswith("|---")]
    errors = {r[0].lstrip("| "): float(r[-1].rstrip(" |")) for r in rows}
    assert list(errors) == list(gptq_cost.VARIANTS)
    assert "Command: `python bench/gptq_cost.py --rows 64" in text
    # on inputs whose channels differ in scale, the default beats the previous default
    assert errors["default (both)"] < errors["previous default"]

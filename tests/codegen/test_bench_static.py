"""bench/kernels_static.py: one small shape through the real compile-and-count path.

Runs in a subprocess because this test session sets TRITON_INTERPRET (the compile needs the
real jit functions); needs the ptxas / nvdisasm that ship in the triton wheel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qcompiler.codegen.aot import _tool

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "kernels_static.py"


@pytest.mark.skipif(_tool("nvdisasm") is None, reason="no nvdisasm (triton's NVIDIA backend)")
def test_static_table_for_one_format(tmp_path: Path) -> None:
    out = tmp_path / "static.md"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONWARNINGS"] = "ignore"
    args = ["--formats", "int4-sym", "--n", "128", "--k", "14336", "--m", "1", "--out", str(out)]
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert "- command: `python bench/kernels_static.py --formats int4-sym" in text
    assert "GEMM M=16" in text  # the header keeps every column; unmeasured cells are "-"
    row = next(ln for ln in text.splitlines() if ln.startswith("| int4-sym | 128 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "-"  # no "before" for another shape
    fp16x2, fp32 = float(cells[3]), float(cells[4])
    assert 1.0 < fp16x2 < fp32  # a real loop was counted; the fp16x2 GEMV is the cheaper one
    rows = json.loads(out.with_suffix(".json").read_text())
    assert rows[0]["format"] == "int4-sym" and rows[0]["gemv"]["loop"] > 0


def test_interpreter_set_is_a_usage_error() -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--formats", "int4"], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: unset TRITON_INTERPRET to compile for a GPU target")

"""The emitted kernels lower through Triton's real compiler (sm_90 cubin), no GPU needed.

The interpreter never runs Triton's compiler, so this catches what it cannot: constructs that
do not lower, 64-bit literals in int32 bit tricks, shared memory over the target's limit.
Runs `python -m qcompiler.codegen.aot` in a subprocess because the interpreter (set for this
test session) replaces the jit functions it compiles.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from qcompiler.codegen.aot import _tool


@pytest.mark.skipif(_tool("ptxas") is None, reason="no ptxas (triton's NVIDIA backend) here")
def test_kernels_compile_for_sm90() -> None:
    """razer4 (E2M1 + special value), int3 (3-byte units, zero points), nvfp4 (E4M3 scale and
    global scale); GEMV (M=1) and GEMM (M=16). Kept small (compiles take seconds each): every
    format and tuning candidate compiles with `python -m qcompiler.codegen.aot
    --all-candidates`, which we ran for the report."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONWARNINGS"] = "ignore"
    proc = subprocess.run(
        [sys.executable, "-m", "qcompiler.codegen.aot", "--format",
         "razer4,int3,nvfp4", "--n", "96", "--k", "256", "--group", "32", "--m", "1,16",
         "--target", "cuda:90"],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ok")]
    assert len(lines) == 3 * 2, proc.stdout

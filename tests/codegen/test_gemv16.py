"""The fp16x2 M = 1 GEMV (gemv16.py) on the interpreter: which kernel runs, and its numerics.

Under TRITON_INTERPRET the kernel runs its Triton twin (test_decode16 checks the twin against
the asm's emulated bits). Results are compared with float64 under the bound derived from the
accumulation precision (test_decode16.dot_bound) plus the final fp16 rounding of y.
"""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import quantized
from test_decode16 import ODD_SPECIALS, U, dot_bound

from qcompiler import formats
from qcompiler.codegen import decode16, runtime
from qcompiler.codegen import decode16_tables as tables
from qcompiler.codegen.decode_plan import plan_for
from qcompiler.codegen.specialize import make_spec


def _module(fmt: str, n: int, k: int, g: int, opts: dict | None = None):
    return runtime.module_for(make_spec(fmt, n, k, g, opts))


CASES = [("razer4", 128, None), ("int4", 64, None), ("pot4", 32, None), ("nvfp4", 16, None),
         ("dint4", 128, None), ("nvfp4-razer", 16, None), ("nf4", 64, None),
         ("razer4", 32, ODD_SPECIALS)]


@pytest.mark.parametrize("fmt,g,opts", CASES, ids=[f"{f}-g{g}" + ("-odd" if o else "")
                                                   for f, g, o in CASES])
@pytest.mark.parametrize("outliers", [False, True])
def test_m1_within_bound_of_float64(fmt: str, g: int, opts: dict | None, outliers: bool) -> None:
    """Partial tiles (N = 40): the masked loads."""
    _check_m1(fmt, g, opts, outliers, n=40, cfg={"SPLIT_K": 2})


@pytest.mark.parametrize("fmt", ["razer4", "nf4"])
def test_m1_whole_tiles_within_bound(fmt: str) -> None:
    """N % BLOCK_N == 0 and K % BLOCK_K == 0: the kernel's unmasked (EVEN) loads."""
    _check_m1(fmt, 64, None, True, n=64, cfg={"SPLIT_K": 2, "BLOCK_N": 32, "BLOCK_K": 128})


def _check_m1(fmt: str, g: int, opts: dict | None, outliers: bool, n: int, cfg: dict) -> None:
    k = 512
    if opts:  # RaZeR with specials that are not one fp16 byte: the set.eq program
        assert decode16.program_kind(plan_for(fmt, opts)) == "e2m1-seteq"
        w = torch.randn(n, k, generator=torch.Generator().manual_seed(3)) * 0.5
        q = formats.get(fmt).quantize(w, group_size=g, search="rtn", **opts)
        w = formats.get(fmt).dequantize(q)
    else:
        q, w = quantized(fmt, n, k, g, seed=3)
    module = _module(fmt, n, k, g, opts)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, k, generator=gen)
    if outliers:
        idx = torch.randperm(k, generator=gen)[: k // 50]
        x[0, idx] *= 100 + 300 * torch.rand(idx.numel(), generator=gen)
    x = x.half()
    assert module.GEMV16_KERNEL is not None
    cfg = dict(module.DEFAULT_CONFIGS["gemv"][1], **cfg)
    y = module.gemv(x, q.tensors(), None, cfg).double()
    w64, x64 = w.double(), x.double()
    ref = x64 @ w64.T
    rounded = tables.rounds_values(plan_for(fmt, opts))  # nf4: fp16-rounded table values
    bound = (torch.from_numpy(dot_bound((x64.abs() @ w64.abs().T).numpy(), k // 32,
                                        rounded=rounded))
             + U * ref.abs())  # y is rounded to fp16 once
    err = (y - ref).abs()
    assert (err <= bound).all(), float((err / bound).max())


def test_m1_fp16_takes_the_fp16x2_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """M = 1, fp16: the fp16x2 GEMV; QC_GEMV=fp32, bf16 or M = 2: the fp32 one."""
    module = _module("razer4", 24, 256, 64)
    q, _ = quantized("razer4", 24, 256, 64)
    launched = []
    real = module._launch

    def spy(kernel, *args, **kw):
        launched.append(kernel)
        return real(kernel, *args, **kw)

    monkeypatch.setattr(module, "_launch", spy)
    x = torch.randn(2, 256).half()
    module.linear(x[:1], q.tensors())
    module.linear(x, q.tensors())
    module.linear(x[:1].bfloat16(), q.tensors())
    monkeypatch.setenv("QC_GEMV", "fp32")
    module.linear(x[:1], q.tensors())
    assert launched == [module.GEMV16_KERNEL] + [module.GEMV_FP32_KERNEL] * 3
    assert module.GEMV_KERNEL is module.GEMV16_KERNEL

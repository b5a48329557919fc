"""The fp16x2 M = 1 GEMV (gemv16.py) on the interpreter: which kernel runs, and its numerics.

Under TRITON_INTERPRET the kernel runs its Triton twin (test_decode16 checks the twin against
the asm's emulated bits). Results are compared with float64 under the bound derived from the
accumulation precision (test_decode16.dot_bound) plus the final fp16 rounding of y.
"""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import quantized
from test_decode16 import U, dot_bound

from qcompiler.codegen import runtime
from qcompiler.codegen.specialize import make_spec


def _module(fmt: str, n: int, k: int, g: int):
    return runtime.module_for(make_spec(fmt, n, k, g))


@pytest.mark.parametrize("fmt,g", [("razer4", 128), ("int4", 64), ("pot4", 32), ("nvfp4", 16),
                                   ("dint4", 128), ("nvfp4-razer", 16)])
@pytest.mark.parametrize("outliers", [False, True])
def test_m1_within_bound_of_float64(fmt: str, g: int, outliers: bool) -> None:
    n, k = 40, 512
    q, w = quantized(fmt, n, k, g, seed=3)
    module = _module(fmt, n, k, g)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, k, generator=gen)
    if outliers:
        idx = torch.randperm(k, generator=gen)[: k // 50]
        x[0, idx] *= 100 + 300 * torch.rand(idx.numel(), generator=gen)
    x = x.half()
    cfg = dict(module.DEFAULT_CONFIGS["gemv"][1], SPLIT_K=2)
    y = module.gemv(x, q.tensors(), None, cfg).double()
    w64, x64 = w.double(), x.double()
    ref = x64 @ w64.T
    bound = (torch.from_numpy(dot_bound((x64.abs() @ w64.abs().T).numpy(), k // 32))
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

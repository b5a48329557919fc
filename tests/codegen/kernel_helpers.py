"""Shared pieces of the kernel tests: reference results, the error bound, test configs."""

from __future__ import annotations

import torch

from qcompiler import formats
from qcompiler.formats.base import QTensor

# Error bound of a kernel result y against the fp32 reference r = x @ W^T (W dequantized by the
# format library in fp32, x the same fp16 values): |y - r| <= EPS * (sum_k |x_k W_nk| + |r|).
# Where it comes from: the GEMM rounds each decoded weight to the activation dtype before
# tl.dot (relative error <= 2^-11 per product for fp16), the fp32 accumulation adds ~K * 2^-24,
# and the result is rounded to fp16 once (<= 2^-11 |r|). EPS = 2^-10 is twice that; bfloat16
# (8 mantissa bits) gets 2^-7 by the same argument.
# float32 activations: the GEMM's dot runs in TF32 on GPUs (x and w rounded to 10 mantissa
# bits, 2^-11 each), hence 2^-9.
EPS = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7, torch.float32: 2.0 ** -9}


def quantized(fmt_name: str, n: int, k: int, g: int, seed: int = 0,
              zero_groups: bool = False) -> tuple[QTensor, torch.Tensor]:
    """(QTensor, its fp32 dequantization) of a seeded random [n, k] weight."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.5
    if zero_groups:  # all-zero groups get scale 0: decodes must give exact zeros
        w[::3, :g] = 0.0
    fmt = formats.get(fmt_name)
    q = fmt.quantize(w, group_size=g, search="rtn")
    return q, fmt.dequantize(q)


def activations(m: int, k: int, dtype: torch.dtype = torch.float16, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, generator=gen).to(dtype)


def assert_matches(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
                   bias: torch.Tensor | None = None, what: str = "") -> None:
    """y equals x @ w^T (+ bias) within the fp16/bf16 bound above."""
    xf = x.float()
    ref = xf @ w.T
    mag = xf.abs() @ w.abs().T
    if bias is not None:
        ref = ref + bias.float()
        mag = mag + bias.float().abs()
    assert y.shape == ref.shape, (what, y.shape, ref.shape)
    assert y.dtype == x.dtype, (what, y.dtype)
    err = (y.float() - ref).abs()
    bound = EPS[x.dtype] * (mag + ref.abs()) + 1e-6
    bad = err > bound
    if bad.any():
        i = tuple(int(v) for v in bad.nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {err.numel()} outputs off, first at "
                             f"{i}: got {float(y.float()[i])}, want {float(ref[i])} "
                             f"(bound {float(bound[i]):.3g})")


def stress_configs(g: int, bits: int) -> dict[str, dict[str, int]]:
    """Explicit configs that exercise both group paths of the kernels and split-K.

    "in-group": BLOCK_K < group size (one scale per row per tile); "multi-group": BLOCK_K spans
    several groups (a scale per packed column), with an uneven split-K of 3 for the GEMV.
    """
    unit = 8 // bits if 8 % bits == 0 else 8  # codes per packing unit
    dot_k = 16 * unit  # GEMM: the per-plane K of a tl.dot must be >= 16
    return {
        "gemv-in-group": dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=max(g // 2, unit),
                              SPLIT_K=1, GROUP_M=1, num_warps=2, num_stages=2),
        "gemv-multi-group": dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=min(4 * g, 512), SPLIT_K=3,
                                 GROUP_M=1, num_warps=4, num_stages=2),
        "gemm-in-group": dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=max(g // 2, dot_k), SPLIT_K=2,
                              GROUP_M=8, num_warps=4, num_stages=2),
        "gemm-multi-group": dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=max(2 * g, dot_k), SPLIT_K=1,
                                 GROUP_M=2, num_warps=4, num_stages=2),
    }

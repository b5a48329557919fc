"""Emitted kernels against the format library's dequantize-then-matmul, on Triton's interpreter.

Every weight format the library registers, odd shapes (N and K not multiples of the tiles; K
a multiple of the group), groups 16..128, GEMV (M <= 4) and GEMM (M > 4), default configs and
configs that force each group path and split-K. The bound is in kernel_helpers.EPS.
"""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import activations, assert_matches, quantized, stress_configs

from qcompiler import formats
from qcompiler.codegen import runtime
from qcompiler.codegen.specialize import make_spec

MAIN_4BIT = ("int4", "int4-sym", "fp4", "razer4", "pot4", "nf4")
SHAPES = ((33, 96, 32), (50, 192, 64), (72, 256, 128))  # (N, K, group)
CASES = [(f, *s) for f in MAIN_4BIT for s in SHAPES] + [
    ("mxfp4", 33, 96, 32), ("mxfp4", 72, 160, 32),
    ("nvfp4", 33, 96, 16), ("nvfp4", 50, 144, 16),
    ("int3", 40, 192, 64), ("int3", 24, 128, 32),
    ("int2", 33, 128, 128), ("pot3", 40, 192, 64), ("pot2", 33, 128, 32),
    ("dint4", 50, 192, 64), ("nvfp4-razer", 33, 96, 16),
    ("int8", 33, 96, 32), ("fp8-e4m3", 33, 96, 32),
]


def weight_formats() -> list[str]:
    return [f for f in formats.names() if formats.get(f).role in ("weight", "both")]


def test_every_weight_format_is_covered() -> None:
    covered = {c[0] for c in CASES}
    assert set(weight_formats()) <= covered, set(weight_formats()) - covered


@pytest.mark.parametrize("fmt,n,k,g", CASES, ids=[f"{c[0]}-n{c[1]}-k{c[2]}-g{c[3]}" for c in CASES])
def test_kernel_matches_reference(fmt: str, n: int, k: int, g: int) -> None:
    q, w = quantized(fmt, n, k, g)
    spec = make_spec(fmt, n, k, g)
    module = runtime.module_for(spec)
    tensors = q.tensors()
    for m in (1, 7):  # GEMV, GEMM (the stress configs below run M=2 and M=20)
        x = activations(m, k, seed=m)
        assert_matches(module.linear(x, tensors), x, w, what=f"{fmt} M={m} default config")
    for name, cfg in stress_configs(g, spec.plan.bits).items():
        m = 2 if name.startswith("gemv") else 20
        x = activations(m, k, seed=10 + m)
        launch = module.gemv if name.startswith("gemv") else module.gemm
        assert_matches(launch(x, tensors, None, cfg), x, w, what=f"{fmt} M={m} {name}")


@pytest.mark.parametrize("fmt", ["pot4", "int4", "fp4", "mxfp4", "nvfp4", "razer4"])
def test_all_zero_groups_decode_to_zero(fmt: str) -> None:
    """Scale-0 groups: pot's exponent subtraction must not wrap, e8m0/e4m3 code 0 gives 0."""
    g = formats.get(fmt).default_group_size
    n, k = 24, 4 * g
    q, w = quantized(fmt, n, k, g, zero_groups=True)
    assert (w[::3, :g] == 0).all()
    module = runtime.module_for(make_spec(fmt, n, k, g))
    for m in (1, 6):
        x = activations(m, k)
        assert_matches(module.linear(x, q.tensors()), x, w, what=f"{fmt} M={m}")


@pytest.mark.parametrize("fmt,g", [("razer4", 32), ("int4", 64), ("nvfp4", 16)])
def test_bias_and_split_k(fmt: str, g: int) -> None:
    n, k = 40, 128
    q, w = quantized(fmt, n, k, g)
    module = runtime.module_for(make_spec(fmt, n, k, g))
    bias = activations(1, n, seed=5)[0]
    split = dict(BLOCK_M=4, BLOCK_N=16, BLOCK_K=g, SPLIT_K=4, GROUP_M=1, num_warps=4,
                 num_stages=2)
    for m, cfg in ((1, None), (4, split), (9, None), (9, dict(split, BLOCK_M=16, BLOCK_K=64))):
        x = activations(m, k, seed=m)
        fn = module.gemv if m <= 4 else module.gemm
        assert_matches(fn(x, q.tensors(), bias, cfg), x, w, bias, what=f"{fmt} M={m} {cfg}")


def test_float32_activations() -> None:
    """fp32 models on CUDA (the default after capture) run the kernels directly."""
    q, w = quantized("pot4", 40, 128, 32)
    module = runtime.module_for(make_spec("pot4", 40, 128, 32))
    for m in (2, 9):
        x = activations(m, 128, torch.float32)
        assert_matches(module.linear(x, q.tensors()), x, w, what=f"fp32 M={m}")


def test_bfloat16_gemv() -> None:
    q, w = quantized("razer4", 40, 128, 32)
    module = runtime.module_for(make_spec("razer4", 40, 128, 32))
    x = activations(3, 128, torch.bfloat16)
    assert_matches(module.gemv(x, q.tensors()), x, w, what="bf16 gemv")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the interpreter's tl.dot "
                    "does not support bfloat16 (triton-lang/triton#11584)")
def test_bfloat16_gemm_cuda() -> None:
    q, w = quantized("razer4", 40, 128, 32)
    q = q.to("cuda")
    module = runtime.module_for(make_spec("razer4", 40, 128, 32))
    x = activations(37, 128, torch.bfloat16).cuda()
    assert_matches(module.gemm(x, q.tensors()).cpu(), x.cpu(), w, what="bf16 gemm")


def test_custom_razer_specials() -> None:
    """Non-default specials change the decode, so they get their own kernel (name suffix)."""
    specials = [3.0, -3.0, 7.0, -7.0]
    fmt = formats.get("razer4")
    gen = torch.Generator().manual_seed(3)
    q = fmt.quantize(torch.randn(24, 64, generator=gen), group_size=32, search="rtn",
                     specials=specials)
    w = fmt.dequantize(q)
    x = activations(2, 64)
    y = runtime.linear(x, q.tensors(), format="razer4", N=24, K=64, group_size=32,
                       opts=q.opts)
    assert_matches(y, x, w, what="custom specials")
    assert make_spec("razer4", 24, 64, 32, q.opts).suffix.startswith("_o")

"""Fake-quantization custom ops for activations (W4A8) and the KV cache.

    %q = qc.quantize_act(%x) {format = "fp8-e4m3", granularity = "token", pow2_scale = false}
    %k = qc.quantize_kv(%add_5) {format = "razer4-kv", group_size = 32, layer = "...k_proj"}

Both are quantize-then-dequantize: same shape and dtype out, values on the format's grid. They
model what a W4A8 kernel or a quantized KV cache does to the numbers, so the compiled program's
quality (KL, perplexity) is the quantized model's, while the graph stays an ordinary float graph
that exports, saves and loads. Rounding and scales come from the formats library (the formats'
own `quantize` then `dequantize`, RTN): nothing here knows a codebook.

pow2_scale (ZeroQuant-FP, arXiv 2307.09782): the paper constrains scales to powers of two so that
casting between FP formats is a bit shift. For an activation scale we round the format's absmax
scale UP to a power of two (`pow2_ceil`, the rule the weight formats use for `scale=pow2`), so the
largest element still fits the grid (no clipping) and the rounding step is at most twice as
coarse.

KV groups run along the last dimension (head_dim) of each token and head: the layout a KV cache
stores, [batch, kv_heads, seq, head_dim]. Quantization is RTN (no clip search): a KV cache is
written online at decode time, one token at a time.

Each op has a reference implementation (any device; what a kernel must match) and a fake one,
so programs containing them trace, export and load. Importing this module registers them; the
capture loader imports it next to `qcompiler.ops` before reading an archive.
"""

from __future__ import annotations

import torch

from qcompiler.ops import NAMESPACE

ACT_FORMATS = ("fp8-e4m3", "int8")
ACT_GRANULARITIES = ("token", "tensor")
KV_FORMATS = ("razer4-kv", "fp4", "int4")

ACT_SCHEMA = "(Tensor x, *, str format, str granularity=\"token\", bool pow2_scale=False) -> Tensor"
KV_SCHEMA = "(Tensor x, *, str format, int group_size, str layer=\"\") -> Tensor"


def fake_quantize_act(x: torch.Tensor, fmt_name: str, granularity: str = "token",
                      pow2_scale: bool = False) -> torch.Tensor:
    """x [..., K] on `fmt_name`'s 8-bit grid, one scale per token (row) or per tensor."""
    from qcompiler import formats
    from qcompiler.formats.scale_search import pow2_ceil, safe

    fmt = formats.get(fmt_name)
    k = x.shape[-1]
    rows = x.reshape(-1, k).to(torch.float32)
    if rows.shape[0] == 0:
        return x.clone()
    if not pow2_scale:  # exactly what the format stores: its quantize, then dequantize
        q = fmt.quantize(rows, search="rtn", granularity=granularity)
        return fmt.dequantize(q, dtype=torch.float32).reshape(x.shape).to(x.dtype)
    xg = rows.reshape(-1, 1, k)
    s = pow2_ceil(fmt._scale(xg, granularity, 1.0))  # the format's absmax scale, rounded up
    out = fmt.round_scaled(xg / safe(s)) * s
    return out.reshape(x.shape).to(x.dtype)


def fake_quantize_kv(x: torch.Tensor, fmt_name: str, group_size: int) -> torch.Tensor:
    """x [..., head_dim] quantized in groups of `group_size` along head_dim (RTN), dequantized."""
    from qcompiler import formats

    fmt = formats.get(fmt_name)
    d = x.shape[-1]
    rows = x.reshape(-1, d).to(torch.float32)
    if rows.shape[0] == 0:
        return x.clone()
    q = fmt.quantize(rows, group_size=group_size, search="rtn")
    return fmt.dequantize(q, dtype=torch.float32).reshape(x.shape).to(x.dtype)


def _quantize_act(x, *, format, granularity="token", pow2_scale=False):
    return fake_quantize_act(x, format, granularity, pow2_scale)


def _quantize_kv(x, *, format, group_size, layer=""):
    return fake_quantize_kv(x, format, group_size)


def _same(x, **_):
    return torch.empty_like(x)


def _define(name: str, schema: str, impl) -> torch._ops.OpOverload:
    qualified = f"{NAMESPACE}::{name}"
    op = torch.library.custom_op(qualified, impl, mutates_args=(), schema=schema)
    op.register_fake(_same)
    return getattr(getattr(torch.ops, NAMESPACE), name).default


quantize_act = _define("quantize_act", ACT_SCHEMA, _quantize_act)
quantize_kv = _define("quantize_kv", KV_SCHEMA, _quantize_kv)

"""Reference implementations of the `qc` ops: the numbers every kernel must match.

They live apart from the definitions (qcompiler/dialect/defs.py) so that the definitions can
name them without the definitions' users (verifier, IR parser) importing kernels, and so that
the facades (qcompiler/ops.py, act_ops.py, hadamard_op.py) can re-export them unchanged.

- `reference_linear`: rebuild the `QTensor`, let the format dequantize, multiply in x's dtype.
  On CUDA a quantized linear first asks the generated Triton kernel (`qcompiler.codegen.runtime`)
  and falls back to the reference only when the codegen package is not installed.
- `fake_quantize_act` / `fake_quantize_kv`: quantize-then-dequantize with the formats' own
  `quantize` and `dequantize` (RTN); see qcompiler/act_ops.py for the pow2-scale rule.
- `hadamard_matmul`: `x @ H` along the last dimension in fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn.functional as F

from qcompiler import formats
from qcompiler.formats.base import QTensor
from qcompiler.formats.scale_search import pow2_ceil, safe
from qcompiler.hadamard import hadamard

PARTS = ("codes", "scales", "zeros", "meta", "global_scale")  # QTensor parts, schema order


def dequantize_weight(fmt: str, parts: dict[str, torch.Tensor | None], *, group_size: int,
                      n: int, k: int, opts: str = "") -> torch.Tensor:
    """The float32 [N, K] weight that a quantized linear stands for."""
    tensors = {key: t for key, t in parts.items() if t is not None}
    q = QTensor.from_tensors(fmt, (n, k), group_size, tensors, json.loads(opts) if opts else {})
    return formats.get(fmt).dequantize(q, dtype=torch.float32)


def reference_linear(fmt: str, x: torch.Tensor, parts: dict[str, torch.Tensor | None],
                     bias: torch.Tensor | None, *, group_size: int, n: int, k: int,
                     opts: str = "") -> torch.Tensor:
    """Dequantize, then `F.linear` in x's dtype (the definition every kernel must match)."""
    w = dequantize_weight(fmt, parts, group_size=group_size, n=n, k=k, opts=opts)
    b = bias.to(x.dtype) if bias is not None else None
    return F.linear(x, w.to(device=x.device, dtype=x.dtype), b)


def cuda_linear(fmt: str, x: torch.Tensor, parts: dict[str, torch.Tensor | None],
                bias: torch.Tensor | None, attrs: dict[str, Any]) -> torch.Tensor | None:
    """The generated kernel's result, or None when the codegen package is not installed."""
    try:
        from qcompiler.codegen import runtime
    except ImportError:
        return None
    return runtime.linear(x, parts, format=fmt, N=attrs["n"], K=attrs["k"],
                          group_size=attrs["group_size"], bias=bias, opts=attrs["opts"] or None,
                          layer=attrs["layer"])


def linear(fmt: str, x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
           zeros: torch.Tensor | None, meta: torch.Tensor | None,
           global_scale: torch.Tensor | None, bias: torch.Tensor | None, *, group_size: int,
           n: int, k: int, layer: str, opts: str = "") -> torch.Tensor:
    """`qc.linear_<fmt>`: the CUDA kernel when there is one, else the reference."""
    parts = dict(zip(PARTS, (codes, scales, zeros, meta, global_scale)))
    if x.is_cuda:
        attrs = dict(group_size=group_size, n=n, k=k, layer=layer, opts=opts)
        out = cuda_linear(fmt, x, parts, bias, attrs)
        if out is not None:
            return out
    return reference_linear(fmt, x, parts, bias, group_size=group_size, n=n, k=k, opts=opts)


def fake_quantize_act(x: torch.Tensor, fmt_name: str, granularity: str = "token",
                      pow2_scale: bool = False) -> torch.Tensor:
    """x [..., K] on `fmt_name`'s 8-bit grid, one scale per token (row) or per tensor."""
    fmt = formats.get(fmt_name)
    k = x.shape[-1]
    rows = x.reshape(-1, k).to(torch.float32)
    if rows.shape[0] == 0:
        return x.clone()
    if not pow2_scale:  # exactly what the format stores: its quantize, then dequantize
        q = fmt.quantize(rows, search="rtn", granularity=granularity)
        return fmt.dequantize(q, dtype=torch.float32).reshape(x.shape).to(x.dtype)
    xg = rows.reshape(-1, 1, k)
    s = pow2_ceil(fmt.absmax_scale(xg, granularity))  # the format's absmax scale, rounded up
    out = fmt.round_scaled(xg / safe(s)) * s
    return out.reshape(x.shape).to(x.dtype)


def fake_quantize_kv(x: torch.Tensor, fmt_name: str, group_size: int) -> torch.Tensor:
    """x [..., head_dim] quantized in groups of `group_size` along head_dim (RTN), dequantized."""
    fmt = formats.get(fmt_name)
    d = x.shape[-1]
    rows = x.reshape(-1, d).to(torch.float32)
    if rows.shape[0] == 0:
        return x.clone()
    q = fmt.quantize(rows, group_size=group_size, search="rtn")
    return fmt.dequantize(q, dtype=torch.float32).reshape(x.shape).to(x.dtype)


def quantize_act(x: torch.Tensor, *, format: str, granularity: str = "token",
                 pow2_scale: bool = False) -> torch.Tensor:
    """`qc.quantize_act`."""
    return fake_quantize_act(x, format, granularity, pow2_scale)


def quantize_kv(x: torch.Tensor, *, format: str, group_size: int, layer: str = "") -> torch.Tensor:
    """`qc.quantize_kv` (`layer` only names the site)."""
    return fake_quantize_kv(x, format, group_size)


def hadamard_matmul(x: torch.Tensor) -> torch.Tensor:
    """`qc.hadamard`: x @ H along the last dimension, H the orthogonal Hadamard matrix."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    h = hadamard(x.shape[-1], dtype).to(device=x.device)
    return (x.to(dtype) @ h).to(x.dtype)

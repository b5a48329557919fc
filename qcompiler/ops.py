"""Quantized custom ops: `qc::linear_<format>`, one `torch.library` op per weight format.

    %y = qc.linear_razer4(%x, %codes, %scales, none, %meta, none, none)
             {group_size = 128, n = 128, k = 256, layer = "model.layers.0.mlp.down_proj"}

One op per format (rather than one op with a `format` string) so that the op name says the
format in the IR, in `torch.export` archives and in structural tests (`{qc.linear_razer4: 7}`).
The keyword-only arguments are the attributes the printer shows: group size, N, K, the layer name
and, when the format needs them to decode, its options as compact JSON.

Each op has
- a reference implementation (any device) that rebuilds the `QTensor`, asks the format to
  dequantize and multiplies in x's dtype: the ground truth that kernels are tested against;
- on CUDA, the generated Triton kernel through `qcompiler.codegen.runtime.linear` when the
  codegen package is installed (falls back to the reference only when it is not importable);
- a fake implementation, so a quantized program still traces, exports, saves and loads.

Importing this module registers the ops for every format whose role is `weight` or `both`;
`torch.export.load` of a quantized program needs that import first (capture does it).
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn.functional as F

NAMESPACE = "qc"
SCHEMA = (
    "(Tensor x, Tensor codes, Tensor scales, Tensor? zeros, Tensor? meta, Tensor? global_scale, "
    "Tensor? bias, *, int group_size, int n, int k, str layer, str opts=\"\") -> Tensor"
)
# Positional operands after x, in schema order (QTensor part names, then the bias).
PARTS = ("codes", "scales", "zeros", "meta", "global_scale")

_OPS: dict[str, Any] = {}  # format name -> the CustomOpDef


def op_name(fmt: str) -> str:
    """`razer4` -> `linear_razer4`, `int4-sym` -> `linear_int4_sym`."""
    return "linear_" + fmt.replace("-", "_").replace(".", "_")


def linear_op(fmt: str) -> torch._ops.OpOverload:
    """The `qc::linear_<fmt>` overload for a weight format (registered on first use)."""
    if fmt not in _OPS:
        register(fmt)
    return getattr(getattr(torch.ops, NAMESPACE), op_name(fmt)).default


def format_of(target: Any) -> str | None:
    """The format behind a `qc::linear_*` op, or None for any other target."""
    if not isinstance(target, torch._ops.OpOverload) or target.namespace != NAMESPACE:
        return None
    name = target._schema.name.split("::")[-1]
    for fmt in _OPS:
        if op_name(fmt) == name:
            return fmt
    return None


def is_quantized_linear(target: Any) -> bool:
    return format_of(target) is not None


def encode_opts(opts: dict[str, Any]) -> str:
    """Format options as the op's `opts` attribute: compact, key-sorted JSON ("" when none)."""
    return json.dumps(opts, sort_keys=True, separators=(",", ":")) if opts else ""


def dequantize_weight(fmt: str, parts: dict[str, torch.Tensor | None], *, group_size: int,
                      n: int, k: int, opts: str = "") -> torch.Tensor:
    """The float32 [N, K] weight that a quantized linear stands for."""
    from qcompiler import formats
    from qcompiler.formats.base import QTensor

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


def _cuda_linear(fmt: str, x: torch.Tensor, parts: dict[str, torch.Tensor | None],
                 bias: torch.Tensor | None, attrs: dict[str, Any]) -> torch.Tensor | None:
    """The generated kernel's result, or None when the codegen package is not installed."""
    try:
        from qcompiler.codegen import runtime
    except ImportError:
        return None
    return runtime.linear(x, parts, format=fmt, N=attrs["n"], K=attrs["k"],
                          group_size=attrs["group_size"], bias=bias, opts=attrs["opts"] or None,
                          layer=attrs["layer"])


def register(fmt: str) -> None:
    """Define `qc::linear_<fmt>` with its reference and fake implementations."""
    if fmt in _OPS:
        return

    def impl(x, codes, scales, zeros, meta, global_scale, bias, *, group_size, n, k, layer,
             opts=""):
        parts = dict(zip(PARTS, (codes, scales, zeros, meta, global_scale)))
        if x.is_cuda:
            attrs = dict(group_size=group_size, n=n, k=k, layer=layer, opts=opts)
            out = _cuda_linear(fmt, x, parts, bias, attrs)
            if out is not None:
                return out
        return reference_linear(fmt, x, parts, bias, group_size=group_size, n=n, k=k, opts=opts)

    def fake(x, codes, scales, zeros, meta, global_scale, bias, *, group_size, n, k, layer,
             opts=""):
        return x.new_empty((*x.shape[:-1], n))

    name = f"{NAMESPACE}::{op_name(fmt)}"
    op = torch.library.custom_op(name, impl, mutates_args=(), schema=SCHEMA)
    op.register_fake(fake)
    _OPS[fmt] = op


def weight_formats() -> list[str]:
    """Names of the formats that can quantize a linear weight (role weight or both)."""
    from qcompiler import formats

    return [f for f in formats.names() if formats.get(f).role in ("weight", "both")]


def register_all() -> list[str]:
    """Register the op of every weight format; returns the formats."""
    names = weight_formats()
    for fmt in names:
        register(fmt)
    return names


register_all()

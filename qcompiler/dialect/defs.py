"""The `qc` dialect: every op defined once.

Each definition below is the single source of truth for an op: qcompiler/dialect/registry.py
registers it with torch.library (schema and fake implementation derived from it), the verifier
and the IR parser check calls against it (operand count, attribute types and values, element
types, shapes, conditions), the printer orders its attributes by it, and docs/CONTRACTS.md's
op table is generated from it (tests/ir/test_op_defs.py keeps the doc in step).

Names available to shapes and conditions: the op's attributes, dimension names bound by the
operands (`d` below), and the op's facts. A quantized linear's facts come from its format
(`format_facts`): `bits` per code, which parts the format stores (`has_zeros`, `has_meta`,
`has_global_scale`) and the scales' element type (`scale_dtype`), read off a one-row probe
quantization so that they cannot drift from the formats library.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch

from qcompiler import formats
from qcompiler.dialect import impls
from qcompiler.dialect.spec import Attr, OpDef, Operand
from qcompiler.hadamard import has_hadamard

ACT_FORMATS = ("fp8-e4m3", "int8")
ACT_GRANULARITIES = ("token", "tensor")
KV_FORMATS = ("razer4-kv", "fp4", "int4")

LINEAR = OpDef(
    name="linear_<format>",
    summary="x @ Wᵀ + bias, W the [n, k] weight that the format's parts decode to; one op per "
            "weight format",
    operands=(
        Operand("x", ("...", "k"), doc="activations, groups run along k"),
        Operand("codes", ("n", "k*bits/8"), "ui8", doc="packed codes (FORMATS.md)"),
        Operand("scales", ("n", "k/group_size"), "scale_dtype", doc="one scale per group"),
        Operand("zeros", ("n", "k/group_size"), "ui8", optional=True, when="has_zeros",
                doc="integer zero points (asymmetric formats)"),
        Operand("meta", ("n", "k/group_size"), "ui8", optional=True, when="has_meta",
                doc="per-group special-value index (RaZeR)"),
        Operand("global_scale", ("1",), "f32", optional=True, when="has_global_scale",
                doc="per-tensor scale (NVFP4 family)"),
        Operand("bias", ("n",), optional=True),
    ),
    attrs=(
        Attr("group_size", "int", doc="elements per scale (k for per-channel formats)"),
        Attr("n", "int", doc="output features"),
        Attr("k", "int", doc="input features (after any padding)"),
        Attr("layer", "str", doc="the layer the weight came from"),
        Attr("opts", "str", "", doc="format options as compact key-sorted JSON"),
    ),
    result=("x", ("...", "n")),
    conditions=("group_size > 0", "n > 0", "k > 0"),
)

QUANTIZE_ACT = OpDef(
    name="quantize_act",
    summary="x quantized to an 8-bit activation format and dequantized (W4A8)",
    operands=(Operand("x", ("...", "d")),),
    attrs=(
        Attr("format", "str", choices=ACT_FORMATS),
        Attr("granularity", "str", "token", choices=ACT_GRANULARITIES),
        Attr("pow2_scale", "bool", False, doc="scales rounded up to powers of two"),
    ),
    result=("x", None),
    impl=impls.quantize_act,
)

QUANTIZE_KV = OpDef(
    name="quantize_kv",
    summary="a key or value quantized in groups along head_dim and dequantized (KV cache)",
    operands=(Operand("x", ("...", "d"), doc="[batch, kv_heads, seq, head_dim]"),),
    attrs=(
        Attr("format", "str", choices=KV_FORMATS),
        Attr("group_size", "int"),
        Attr("layer", "str", "", doc="the k_proj / v_proj it follows"),
    ),
    result=("x", None),
    conditions=("group_size > 0", "d % group_size == 0"),
    impl=impls.quantize_kv,
)

HADAMARD = OpDef(
    name="hadamard",
    summary="x @ H along the last dimension, H the orthogonal Hadamard matrix of that size",
    operands=(Operand("x", ("...", "d")),),
    attrs=(),
    result=("x", None),
    conditions=("has_hadamard(d)",),
    impl=impls.hadamard_matmul,
)

OPS = {d.name: d for d in (QUANTIZE_ACT, QUANTIZE_KV, HADAMARD)}  # plus linear_<format>


def weight_formats() -> list[str]:
    """Names of the formats that can quantize a linear weight (role weight or both)."""
    return [f for f in formats.names() if formats.get(f).role in ("weight", "both")]


def linear_def(fmt: str) -> OpDef:
    """The definition of `qc.linear_<fmt>`."""
    return dataclasses.replace(LINEAR, name=op_name(fmt), impl=functools.partial(impls.linear, fmt))


def op_name(fmt: str) -> str:
    """`razer4` -> `linear_razer4`, `int4-sym` -> `linear_int4_sym`."""
    return "linear_" + fmt.replace("-", "_").replace(".", "_")


@functools.lru_cache(maxsize=None)
def format_facts(fmt: str) -> dict[str, Any]:
    """What a format stores per weight, from quantizing one seeded row (cheap, cached)."""
    f = formats.get(fmt)
    group = min(f.group_sizes) if f.group_sizes else 32
    k = group * 8  # a multiple of every packing's element block
    w = torch.randn(1, k, generator=torch.Generator().manual_seed(0))
    parts = f.quantize(w, group_size=group, search="rtn").tensors()
    return {"bits": f.bits, "has_zeros": "zeros" in parts, "has_meta": "meta" in parts,
            "has_global_scale": "global_scale" in parts, "scale_dtype": parts["scales"].dtype}


def facts(name: str) -> dict[str, Any]:
    """The facts an op's shapes and conditions may name, besides attributes and dims."""
    fmt = format_for(name)
    if fmt is not None:
        return format_facts(fmt)
    return {"has_hadamard": has_hadamard}


def format_for(name: str) -> str | None:
    """The weight format of a `linear_<format>` op name, None for any other name."""
    if not name.startswith("linear_"):
        return None
    return next((f for f in weight_formats() if op_name(f) == name), None)


def definition(name: str) -> OpDef | None:
    """The definition of the `qc` op called `name` (without the `qc.`), None if unknown."""
    fmt = format_for(name)
    return linear_def(fmt) if fmt is not None else OPS.get(name)

"""Quantized linears, `qc.linear_<format>`: one op per weight format (the public handles).

    %y = qc.linear_razer4(%x, %codes, %scales, none, %meta, none, none)
             {group_size = 128, n = 128, k = 256, layer = "model.layers.0.mlp.down_proj"}

One op per format (rather than one op with a `format` string) so that the op name says the
format in the IR, in `torch.export` archives and in structural tests (`{qc.linear_razer4: 7}`).
The op is defined once, with its operand shapes (codes [n, k·bits/8], scales/zeros/meta
[n, k/group_size], ...), in qcompiler/dialect/defs.py; qcompiler/dialect/registry.py registers
it; the reference implementation is qcompiler/dialect/impls.py. This module keeps the names
passes and loaders use. Importing it registers every qc op (`torch.export.load` of a quantized
program needs that first; capture does it).
"""

from __future__ import annotations

import json
from typing import Any

from qcompiler.dialect.defs import LINEAR, op_name, weight_formats
from qcompiler.dialect.impls import PARTS, dequantize_weight, reference_linear
from qcompiler.dialect.registry import NAMESPACE, format_of, linear_def, linear_op, register_all
from qcompiler.dialect.registry import register as register_def

SCHEMA = LINEAR.schema()

__all__ = ["NAMESPACE", "PARTS", "SCHEMA", "dequantize_weight", "encode_opts", "format_of",
           "is_quantized_linear", "linear_op", "op_name", "reference_linear", "register",
           "register_all", "weight_formats"]


def is_quantized_linear(target: Any) -> bool:
    return format_of(target) is not None


def encode_opts(opts: dict[str, Any]) -> str:
    """Format options as the op's `opts` attribute: compact, key-sorted JSON ("" when none)."""
    return json.dumps(opts, sort_keys=True, separators=(",", ":")) if opts else ""


def register(fmt: str) -> None:
    """Define `qc::linear_<fmt>` from its definition (idempotent)."""
    register_def(linear_def(fmt))

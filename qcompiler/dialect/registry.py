"""The `qc` ops as torch.library ops, registered from their definitions (defs.py).

Importing this module registers `qc.quantize_act`, `qc.quantize_kv`, `qc.hadamard` and one
`qc.linear_<format>` per weight format (a format added later is registered on first use by
`linear_op`). Schema, reference implementation and fake implementation all come from the op's
`OpDef`; nothing else in the compiler calls `torch.library`. A `torch.export` archive that
contains qc ops can be loaded once this module is imported (capture does it).

It also answers, for an fx node or a torch op, which definition stands behind it, and checks a
node's call against that definition (`check_node`, run by the verifier; the IR builder runs the
same `OpDef.check` with a file position).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.fx as fx

from qcompiler.dialect.defs import (definition, facts, format_for, linear_def, op_name,
                                    weight_formats)
from qcompiler.dialect.spec import UNKNOWN, OpDef

NAMESPACE = "qc"
_REGISTERED: dict[str, Any] = {}  # op name -> its torch.library op


def register(d: OpDef) -> Any:
    """Define `qc::<name>` from its definition (idempotent)."""
    if d.name not in _REGISTERED:
        def fake(*args: Any, **kwargs: Any) -> torch.Tensor:
            return d.fake_result(d.bind(args, kwargs))

        op = torch.library.custom_op(f"{NAMESPACE}::{d.name}", d.impl, mutates_args=(),
                                     schema=d.schema())
        op.register_fake(fake)
        _REGISTERED[d.name] = op
    return _REGISTERED[d.name]


def custom_op(name: str) -> Any:
    """The torch.library op object of `qc.<name>` (callable like a function)."""
    d = definition(name)
    if d is None:
        raise KeyError(f"no qc op named {name!r}")
    return register(d)


def overload(name: str) -> torch._ops.OpOverload:
    """The `torch.ops.qc.<name>.default` overload, as fx graphs hold it."""
    custom_op(name)
    return getattr(getattr(torch.ops, NAMESPACE), name).default


def linear_op(fmt: str) -> torch._ops.OpOverload:
    """The `qc::linear_<fmt>` overload for a weight format (registered on first use)."""
    register(linear_def(fmt))
    return overload(op_name(fmt))


def register_all() -> list[str]:
    """Register every qc op; returns the weight formats that have a linear op."""
    names = weight_formats()
    for fmt in names:
        register(linear_def(fmt))
    for name in ("quantize_act", "quantize_kv", "hadamard"):
        custom_op(name)
    return names


def name_of(target: Any) -> str | None:
    """`qc.linear_razer4`'s overload -> `linear_razer4`; None for anything not in qc::."""
    if not isinstance(target, torch._ops.OpOverload) or target.namespace != NAMESPACE:
        return None
    return target._schema.name.split("::")[-1]


def definition_of(target: Any) -> OpDef | None:
    """The definition behind a call target, None for ops that are not defined `qc` ops."""
    name = name_of(target)
    return definition(name) if name is not None else None


def format_of(target: Any) -> str | None:
    """The format behind a `qc::linear_*` op, or None for any other target."""
    name = name_of(target)
    return format_for(name) if name is not None else None


def check_call(d: OpDef, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
    """Problems with calling `d` on these operand values (tensors, fake tensors or None)."""
    return d.check(tuple(args), dict(kwargs), facts(d.name))


def check_node(node: fx.Node, value_of: Callable[[fx.Node], Any] | None = None) -> list[str]:
    """Problems with a call_function node of a defined qc op, judged on its operands' values:
    `value_of(operand)` (the verifier gives the stored tensor of a get_attr), else the operand's
    `meta["val"]`; an operand with neither is checked for presence only."""
    d = definition_of(node.target)
    if d is None:
        return []

    def value(n: fx.Node) -> Any:
        val = value_of(n) if value_of is not None else None
        val = val if val is not None else n.meta.get("val")
        return val if val is not None else UNKNOWN

    args, kwargs = fx.node.map_arg((node.args, node.kwargs), value)
    return check_call(d, args, kwargs)


def attr_order(target: Any, kwargs: dict[str, Any]) -> list[str]:
    """The keys of `kwargs` in the order the printer writes them: definition order for qc ops."""
    d = definition_of(target)
    if d is None:
        return list(kwargs)
    order = [a.name for a in d.attrs]
    return sorted(kwargs, key=lambda k: order.index(k) if k in order else len(order))


register_all()

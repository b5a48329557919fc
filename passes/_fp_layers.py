"""What `lower-datatype` leaves in floating point, and saying so.

A compile that quantizes "everything" while some matmul weights quietly stay fp32 (MoE experts
behind `bmm` or a custom grouped-matmul op, an integer weight, a layer whose K the group size
does not divide) looks like a success and is not. So every layer kept in fp gets a row in the
report (report.json `layers`, `status: "skipped"` with its `reason`) and, unless the user asked
for it by name (a `skip` pattern or an `override`, which is what the default LM head /
embeddings / MoE router skip is), one warning line on stderr lists them.

`unlowered_weights` finds constant float weights that reach a matmul-like op other than a
quantizable `aten.linear` (the ones lower-datatype cannot see), through the reshaping and
indexing ops that models put between a weight and its matmul (`W[e]`, `W.t()`, `W[ids]`).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx

aten = torch.ops.aten
# Ops that only reshape, slice, index or cast a weight on its way to a matmul.
PASS_THROUGH = {
    aten.select.int, aten.slice.Tensor, aten.t.default, aten.transpose.int, aten.permute.default,
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.expand.default,
    aten.unsqueeze.default, aten.squeeze.dim, aten.index.Tensor, aten.index_select.default,
    aten.to.dtype, aten._to_copy.default, aten.clone.default, aten.contiguous.default,
    aten.alias.default, aten.unbind.int, aten.chunk.default, aten.split.Tensor,
}
MATMULS = {
    aten.mm.default, aten.bmm.default, aten.matmul.default, aten.addmm.default,
    aten.baddbmm.default, aten.einsum.default, aten.linear.default,
}
if hasattr(aten, "_grouped_mm"):
    MATMULS.add(aten._grouped_mm.default)
OWN_NAMESPACES = ("aten", "prims", "qc")
USER_CHOSEN = ("skip pattern", "override")  # reasons the user named; not warned about
SHOWN = 6  # layer names in the warning line (the report has all of them)


def _op_name(node: fx.Node) -> str:
    name = getattr(node.target, "name", None)
    text = name() if callable(name) else str(node.target)
    return text.replace("::", ".").removesuffix(".default")


def _foreign(node: fx.Node) -> bool:
    """A custom op from another library (e.g. transformers::grouped_mm_fallback)."""
    ns = getattr(node.target, "namespace", None)
    return isinstance(ns, str) and ns not in OWN_NAMESPACES


def _matmul_use(attr: fx.Node) -> fx.Node | None:
    """The matmul-like node `attr`'s value reaches through pass-through ops, if any (a linear
    reading it directly as its weight is the normal case and does not count)."""
    todo = [(user, attr) for user in attr.users]
    seen: set[fx.Node] = set()
    while todo:
        node, via = todo.pop()
        if node in seen or node.op != "call_function":
            continue
        seen.add(node)
        if node.target is aten.linear.default and via is attr:
            continue  # a plain linear: lower-datatype's business, reported per layer
        if node.target in MATMULS or _foreign(node):
            return node
        if node.target in PASS_THROUGH or node.target is operator.getitem:
            todo.extend((user, node) for user in node.users)
    return None


def unlowered_weights(program: Any) -> list[dict[str, Any]]:
    """Report rows for constant weights (2-D or more) that feed a matmul but are not the weight
    of a quantizable linear: they stay as they are. `n`/`k` are rows x last dim (the artifact's
    layer table counts weights with them); `shape` is the real shape."""
    rows = []
    for attr in program.nodes("get_attr"):
        target = str(attr.target)
        value = program.get_tensor(target) if program.has_tensor(target) else None
        if not isinstance(value, torch.Tensor) or value.dim() < 2:
            continue
        use = _matmul_use(attr)
        if use is None:
            continue
        dtype = str(value.dtype).removeprefix("torch.")
        what = "" if value.is_floating_point() else f"{dtype} weight, not floating point; "
        k = int(value.shape[-1])
        rows.append({"name": target, "n": value.numel() // max(k, 1), "k": k,
                     "shape": list(value.shape), "dtype": dtype, "status": "skipped",
                     "reason": f"{what}read by {_op_name(use)} (%{use.name}), not by a linear"})
    return rows


def warn_fp_layers(pass_name: str, rows: list[dict[str, Any]], ctx: Any) -> None:
    """One warning line naming the layers kept in fp for reasons the user did not choose; a -v
    note for the ones skipped on request."""
    chosen = [r for r in rows if r.get("reason") in USER_CHOSEN]
    if chosen:
        ctx.log(f"{pass_name}: kept in floating point as asked (skip/override): "
                + ", ".join(r["name"] for r in chosen))
    other = [r for r in rows if r.get("reason") not in USER_CHOSEN]
    if not other:
        return
    shown = "; ".join(f"{r['name']} ({r['reason']})" for r in other[:SHOWN])
    more = f"; and {len(other) - SHOWN} more" if len(other) > SHOWN else ""
    ctx.warn(f"{pass_name}: {len(other)} weight(s) kept in floating point: {shown}{more} "
             "(all are listed in the report)")

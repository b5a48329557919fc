"""Node-level structural matching on a Program's graph: views, linears and what feeds them.

Passes that move scales or rotations between layers (fold-norms, rotate, smoothing) must know
*which* linears read a value and what produces a linear's input. Names differ across model
families (`q_proj`, `c_attn`, `query`, `qkv_proj`), so everything here is found from the graph's
structure, never from parameter names:

- `strip_views(node)` / `value_uses(node)`: a value's producer and its users, looking through
  views that keep the last (channel) dimension.
- `consumer_linears(node)`: the linears that read a value as their input, plus every other use.
- `linear_producer(linear, norms)`: what produces a linear's input (a norm, another
  linear, the up projection of a gated MLP, or something a per-channel scale cannot pass
  through).
- `iter_weight_uses(program, target)`: every use of a weight tensor.

Built on these helpers: `qcompiler.graph_norms` (RMSNorm/LayerNorm and the linears reading
them) and `qcompiler.residual_stream` (the residual stream and the decoder layers).

A "row-preserving view" (view/reshape/_unsafe_view with the same last dimension) only regroups
leading dimensions of a contiguous tensor, so channel c stays channel c: per-channel facts
(a norm weight, a rotation of the channel space) pass through it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Literal

import torch
import torch.fx as fx

from qcompiler.program import Program

if TYPE_CHECKING:  # graph_norms builds on this module; only the annotation is needed here
    from qcompiler.graph_norms import Norm

aten = torch.ops.aten
VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)
CASTS = (aten._to_copy.default, aten.to.dtype)
ADDS = (aten.add.Tensor,)
ACTIVATIONS = (aten.silu.default, aten.gelu.default, aten.relu.default, aten.sigmoid.default,
               aten.tanh.default)
ATTENTION = (aten.scaled_dot_product_attention.default, aten._softmax.default,
             aten.softmax.int)


# ---- small node helpers ------------------------------------------------------------------------
def val_of(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def last_dim(node: Any) -> Any:
    val = val_of(node)
    return val.shape[-1] if isinstance(val, torch.Tensor) and val.dim() else None


def is_linear(node: Any) -> bool:
    return (isinstance(node, fx.Node) and node.op == "call_function"
            and node.target is aten.linear.default)


def is_call(node: Any, targets: tuple[Any, ...]) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def is_row_view(node: fx.Node) -> bool:
    """A view that only regroups leading dims: channel c of its input stays channel c."""
    if not is_call(node, VIEWS) or not isinstance(node.args[0], fx.Node):
        return False
    a, b = last_dim(node.args[0]), last_dim(node)
    return a is not None and isinstance(a, int) and a == b


def strip_views(node: Any) -> Any:
    """Walk back from `node` through row-preserving views to the value's producer."""
    while isinstance(node, fx.Node) and is_row_view(node):
        node = node.args[0]
    return node


def strip_casts(node: Any) -> tuple[Any, list[fx.Node]]:
    casts = []
    while is_call(node, CASTS):
        casts.append(node)
        node = node.args[0]
    return node, casts


def value_uses(node: fx.Node) -> list[fx.Node]:
    """The users of `node`'s value, with row-preserving views expanded into their own users."""
    out: list[fx.Node] = []
    for user in node.users:
        if is_row_view(user):
            out.extend(value_uses(user))
        else:
            out.append(user)
    return out


def reaches(user: fx.Node, node: fx.Node, arg_index: int) -> bool:
    """Whether `user.args[arg_index]` is `node` up to row-preserving views."""
    return len(user.args) > arg_index and strip_views(user.args[arg_index]) is node


def consumer_linears(node: fx.Node) -> tuple[list[fx.Node], list[fx.Node]]:
    """(linears reading `node` as their input x, every other use), through row views.

    A linear that uses the value as its weight or bias counts as an "other" use: only the
    input operand can absorb a per-input-channel scale or rotation.
    """
    linears: list[fx.Node] = []
    others: list[fx.Node] = []
    for user in value_uses(node):
        target = linears if is_linear(user) and reaches(user, node, 0) and not any(
            reaches(user, node, i) for i in (1, 2)) else others
        if user not in target:
            target.append(user)
    return linears, others


# ---- what feeds a linear -----------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Producer:
    """What produces a linear's input, as far as a per-input-channel scale s is concerned.

    - `norm`: a norm output; divide the norm's γ (and β) by s.
    - `linear`: another linear's output; divide that linear's output rows (and bias) by s.
    - `gated`: `act(gate(x)) * up(x)`; divide `linear` (the up projection) rows by s.
    - `other`: anything else (attention, a fused split); no exact place for the scale.
    """

    kind: Literal["norm", "linear", "gated", "other"]
    node: fx.Node  # the value feeding the linear (row views stripped)
    norm: Norm | None = None
    linear: fx.Node | None = None


def linear_producer(linear: fx.Node, norms: list[Norm]) -> Producer:
    """Classify what produces `linear`'s input; `norms` are the program's norms
    (`qcompiler.graph_norms.find_norms`), the only ones recognised as producers."""
    src = strip_views(linear.args[0])
    for norm in norms:
        if norm.output is src:
            return Producer("norm", src, norm=norm)
    if is_linear(src):
        return Producer("linear", src, linear=src)
    if is_call(src, (aten.mul.Tensor,)) and all(isinstance(a, fx.Node) for a in src.args[:2]):
        a, b = (strip_views(x) for x in src.args[:2])
        gated = [up for up, act in ((a, b), (b, a)) if is_linear(up) and is_call(act, ACTIVATIONS)]
        if len(gated) == 1:
            return Producer("gated", src, linear=gated[0])
    return Producer("other", src)


def iter_weight_uses(program: Program, target: str) -> Iterator[tuple[fx.Node, fx.Node]]:
    """(get_attr node, user) for every use of the tensor `target` anywhere in the graph."""
    for attr in program.graph.find_nodes(op="get_attr", target=target):
        for user in attr.users:
            yield attr, user

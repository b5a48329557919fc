"""Normalizations in a Program's graph and the linears that read them.

Folding a norm's γ/β into the linears after it (fold-norms), smoothing across a norm, and
rotating the residual stream (rotate) all start from the model's norms. Module names differ
across model families (`input_layernorm`, `ln_1`, `LayerNorm`), so norms are found from the
graph's structure, never from parameter names:

- `find_norms(program)`: RMSNorm (decomposed by export into pow → mean → add(eps) → rsqrt →
  mul, optionally × weight) and `aten.layer_norm`, with their weight/bias `get_attr` nodes.
  Gemma's RMSNorm scales by `(1 + w)`: its `offset` is 1, so γ = offset + w; a pass that
  changes γ must write w = γ − offset (fold-norms leaves w = 0 there, γ = 1).
- `norm_consumers(norm)`: the linears that read a norm's output as their input, looking through
  row-preserving views (see `qcompiler.graph_match`), plus every other use. γ/β can move into
  the linears exactly only when there is no other use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.fx as fx

from qcompiler.graph_match import (ADDS, CASTS, consumer_linears, is_call, last_dim, strip_casts,
                                   val_of)
from qcompiler.program import Program

aten = torch.ops.aten
TAIL_CASTS = CASTS + (aten.type_as.default,)


@dataclass(frozen=True, eq=False)
class Norm:
    """One normalization in the graph.

    `input` is the normalized value (casts stripped), `output` the node whose value is the
    normalized, scaled and shifted result that consumers read. `weight`/`bias` are the
    `get_attr` nodes of the scale and β (None when absent); the scale applied is
    γ = `offset` + weight (offset 1 for Gemma's `(1 + w)`, else 0). `nodes` are the pattern's
    own nodes, so a walker can tell a use internal to the norm from a real consumer of `input`.
    """

    kind: Literal["rms", "layer"]
    input: fx.Node
    output: fx.Node
    weight: fx.Node | None
    bias: fx.Node | None
    eps: float
    nodes: tuple[fx.Node, ...]
    offset: float = 0.0

    @property
    def name(self) -> str:
        """The norm's module name when it has a weight (`model.layers.0.input_layernorm`)."""
        if self.weight is not None:
            return str(self.weight.target).removesuffix(".weight")
        return self.output.name

    @property
    def hidden(self) -> int | None:
        return last_dim(self.output)


def _scalar(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _match_rms(rsqrt: fx.Node) -> Norm | None:
    """x * rsqrt(mean(x², -1, keepdim) + eps) [* γ], casts allowed around the pieces."""
    add = rsqrt.args[0]
    if not is_call(add, ADDS + (aten.add.Scalar,)):
        return None
    a, b = add.args[:2]
    mean, eps = (a, _scalar(b)) if isinstance(a, fx.Node) else (b, _scalar(a))
    if eps is None or not is_call(mean, (aten.mean.dim,)):
        return None
    dims = mean.args[1] if len(mean.args) > 1 else mean.kwargs.get("dim")
    keep = mean.args[2] if len(mean.args) > 2 else mean.kwargs.get("keepdim", False)
    sq = mean.args[0]
    rank = val_of(sq).dim() if isinstance(val_of(sq), torch.Tensor) else None
    if not keep or list(dims or []) not in ([-1], [rank - 1] if rank else [-1]):
        return None
    if is_call(sq, (aten.pow.Tensor_Scalar,)) and _scalar(sq.args[1]) == 2:
        x0 = sq.args[0]
    elif is_call(sq, (aten.mul.Tensor,)) and sq.args[0] is sq.args[1]:
        x0 = sq.args[0]
    else:
        return None
    x, casts = strip_casts(x0)
    scaled = None
    for user in rsqrt.users:
        if is_call(user, (aten.mul.Tensor,)):
            other = user.args[0] if user.args[1] is rsqrt else user.args[1]
            if strip_casts(other)[0] is x:
                scaled = user
                casts += strip_casts(other)[1]
    if scaled is None:
        return None
    nodes = [*casts, sq, mean, add, rsqrt, scaled]
    out, weight = scaled, None
    while len(out.users) == 1 and is_call(next(iter(out.users)), CASTS):
        out = next(iter(out.users))
        nodes.append(out)
    offset = 0.0
    if len(out.users) == 1:
        user = next(iter(out.users))
        if is_call(user, (aten.mul.Tensor,)):
            other = user.args[0] if user.args[1] is out else user.args[1]
            weight, offset, extra = _scale(other)
            if weight is not None:
                out = user
                nodes += [*extra, user]
                while len(out.users) == 1 and is_call(next(iter(out.users)), TAIL_CASTS):
                    out = next(iter(out.users))  # Gemma: (x̂ · (1 + w)).type_as(x)
                    nodes.append(out)
    return Norm("rms", x, out, weight, None, eps, tuple(dict.fromkeys(nodes)), offset)


def _is_vector_param(node: Any) -> bool:
    return (isinstance(node, fx.Node) and node.op == "get_attr"
            and isinstance(val_of(node), torch.Tensor) and val_of(node).dim() == 1)


def _scale(node: Any) -> tuple[fx.Node | None, float, list[fx.Node]]:
    """(weight, offset, own nodes) when `node` is a norm scale `w` or `w + c` (Gemma: 1 + w),
    casts of w allowed; (None, 0, []) otherwise."""
    if _is_vector_param(node):
        return node, 0.0, []
    if (is_call(node, ADDS) and len(node.users) == 1 and not node.kwargs
            and len(node.args) == 2):
        a, b = node.args
        w, c = (a, _scalar(b)) if isinstance(a, fx.Node) else (b, _scalar(a))
        w, casts = strip_casts(w)
        if c is not None and _is_vector_param(w) and all(len(n.users) == 1 for n in casts):
            return w, c, [*casts, node]
    return None, 0.0, []


def _match_layer_norm(node: fx.Node) -> Norm | None:
    args = list(node.args) + [None] * (5 - len(node.args))
    x, shape, weight, bias = args[:4]
    eps = _scalar(args[4]) if args[4] is not None else node.kwargs.get("eps", 1e-5)
    weight = weight if weight is not None else node.kwargs.get("weight")
    bias = bias if bias is not None else node.kwargs.get("bias")
    if len(shape) != 1:  # normalizing over several dims mixes more than the channel axis
        return None
    ok = all(t is None or (isinstance(t, fx.Node) and t.op == "get_attr") for t in (weight, bias))
    if not ok:
        return None
    return Norm("layer", x, node, weight, bias, float(eps), (node,))


def find_norms(program: Program) -> list[Norm]:
    """Every RMSNorm and LayerNorm of the graph, in graph order."""
    norms: list[Norm] = []
    for node in program.graph.nodes:
        if is_call(node, (aten.rsqrt.default,)):
            norm = _match_rms(node)
        elif is_call(node, (aten.layer_norm.default,)):
            norm = _match_layer_norm(node)
        else:
            continue
        if norm is not None:
            norms.append(norm)
    return norms


def norm_consumers(norm: Norm) -> tuple[list[fx.Node], list[fx.Node]]:
    """(linears reading the norm's output as input, every other use of it).

    Folding γ/β into the consumers, or smoothing across the norm, is exact only when the
    second list is empty (pre-norm blocks); in post-norm models the output also feeds the
    residual add, which the linears' weights cannot compensate.
    """
    return consumer_linears(norm.output)

"""Structural matching on a Program's graph: norms, their consumers, the residual stream, layers.

Passes that move scales or rotations between layers (fold-norms, rotate, smoothing) must know
*which* linears read a norm's output and what writes into the residual stream. Names differ
across model families (`q_proj`, `c_attn`, `query`, `qkv_proj`), so everything here is found
from the graph's structure, never from parameter names:

- `find_norms(program)`: RMSNorm (decomposed by export into pow → mean → add(eps) → rsqrt →
  mul, optionally × weight) and `aten.layer_norm`, with their weight/bias `get_attr` nodes.
- `consumer_linears(node)` / `norm_consumers(norm)`: the linears that read a value as their
  input, looking through views that keep the last (channel) dimension, plus every other use.
- `linear_producer(program, linear)`: what produces a linear's input (a norm, another linear,
  the up projection of a gated MLP, or something a per-channel scale cannot pass through).
- `find_residual_stream(program)`: embeddings, residual adds, the norms reading the stream,
  the linears writing into it, the final norm and the LM head.
- `decoder_layers(program)`: per pre-norm block, the q/k/v/o/gate/up/down linears by role.

A "row-preserving view" (view/reshape/_unsafe_view with the same last dimension) only regroups
leading dimensions of a contiguous tensor, so channel c stays channel c: per-channel facts
(a norm weight, a rotation of the channel space) pass through it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

import torch
import torch.fx as fx

from qcompiler.program import Program

aten = torch.ops.aten
VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)
CASTS = (aten._to_copy.default, aten.to.dtype)
ADDS = (aten.add.Tensor,)
ACTIVATIONS = (aten.silu.default, aten.gelu.default, aten.relu.default, aten.sigmoid.default,
               aten.tanh.default)
ATTENTION = (aten.scaled_dot_product_attention.default, aten._softmax.default,
             aten.softmax.int)


# ---- small node helpers ------------------------------------------------------------------------
def _val(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def _last_dim(node: Any) -> Any:
    val = _val(node)
    return val.shape[-1] if isinstance(val, torch.Tensor) and val.dim() else None


def is_linear(node: Any) -> bool:
    return (isinstance(node, fx.Node) and node.op == "call_function"
            and node.target is aten.linear.default)


def _is_call(node: Any, targets: tuple[Any, ...]) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def is_row_view(node: fx.Node) -> bool:
    """A view that only regroups leading dims: channel c of its input stays channel c."""
    if not _is_call(node, VIEWS) or not isinstance(node.args[0], fx.Node):
        return False
    a, b = _last_dim(node.args[0]), _last_dim(node)
    return a is not None and isinstance(a, int) and a == b


def strip_views(node: Any) -> Any:
    """Walk back from `node` through row-preserving views to the value's producer."""
    while isinstance(node, fx.Node) and is_row_view(node):
        node = node.args[0]
    return node


def _strip_casts(node: Any) -> tuple[Any, list[fx.Node]]:
    casts = []
    while _is_call(node, CASTS):
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


def _reaches(user: fx.Node, node: fx.Node, arg_index: int) -> bool:
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
        target = linears if is_linear(user) and _reaches(user, node, 0) and not any(
            _reaches(user, node, i) for i in (1, 2)) else others
        if user not in target:
            target.append(user)
    return linears, others


# ---- norms -------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Norm:
    """One normalization in the graph.

    `input` is the normalized value (casts stripped), `output` the node whose value is the
    normalized, scaled and shifted result that consumers read. `weight`/`bias` are the
    `get_attr` nodes of γ and β (None when absent); `nodes` are the pattern's own nodes, so a
    walker can tell a use internal to the norm from a real consumer of `input`.
    """

    kind: Literal["rms", "layer"]
    input: fx.Node
    output: fx.Node
    weight: fx.Node | None
    bias: fx.Node | None
    eps: float
    nodes: tuple[fx.Node, ...]

    @property
    def name(self) -> str:
        """The norm's module name when it has a weight (`model.layers.0.input_layernorm`)."""
        if self.weight is not None:
            return str(self.weight.target).removesuffix(".weight")
        return self.output.name

    @property
    def hidden(self) -> int | None:
        return _last_dim(self.output)


def _scalar(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _match_rms(rsqrt: fx.Node) -> Norm | None:
    """x * rsqrt(mean(x², -1, keepdim) + eps) [* γ], casts allowed around the pieces."""
    add = rsqrt.args[0]
    if not _is_call(add, ADDS + (aten.add.Scalar,)):
        return None
    a, b = add.args[:2]
    mean, eps = (a, _scalar(b)) if isinstance(a, fx.Node) else (b, _scalar(a))
    if eps is None or not _is_call(mean, (aten.mean.dim,)):
        return None
    dims = mean.args[1] if len(mean.args) > 1 else mean.kwargs.get("dim")
    keep = mean.args[2] if len(mean.args) > 2 else mean.kwargs.get("keepdim", False)
    sq = mean.args[0]
    rank = _val(sq).dim() if isinstance(_val(sq), torch.Tensor) else None
    if not keep or list(dims or []) not in ([-1], [rank - 1] if rank else [-1]):
        return None
    if _is_call(sq, (aten.pow.Tensor_Scalar,)) and _scalar(sq.args[1]) == 2:
        x0 = sq.args[0]
    elif _is_call(sq, (aten.mul.Tensor,)) and sq.args[0] is sq.args[1]:
        x0 = sq.args[0]
    else:
        return None
    x, casts = _strip_casts(x0)
    scaled = None
    for user in rsqrt.users:
        if _is_call(user, (aten.mul.Tensor,)):
            other = user.args[0] if user.args[1] is rsqrt else user.args[1]
            if _strip_casts(other)[0] is x:
                scaled = user
                casts += _strip_casts(other)[1]
    if scaled is None:
        return None
    nodes = [*casts, sq, mean, add, rsqrt, scaled]
    out, weight = scaled, None
    while len(out.users) == 1 and _is_call(next(iter(out.users)), CASTS):
        out = next(iter(out.users))
        nodes.append(out)
    if len(out.users) == 1:
        user = next(iter(out.users))
        if _is_call(user, (aten.mul.Tensor,)):
            other = user.args[0] if user.args[1] is out else user.args[1]
            if (isinstance(other, fx.Node) and other.op == "get_attr"
                    and isinstance(_val(other), torch.Tensor) and _val(other).dim() == 1):
                out, weight = user, other
                nodes.append(user)
    return Norm("rms", x, out, weight, None, eps, tuple(dict.fromkeys(nodes)))


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
        if _is_call(node, (aten.rsqrt.default,)):
            norm = _match_rms(node)
        elif _is_call(node, (aten.layer_norm.default,)):
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


def linear_producer(program: Program, linear: fx.Node,
                    norms: list[Norm] | None = None) -> Producer:
    """Classify what produces `linear`'s input (pass `norms` to avoid re-matching)."""
    src = strip_views(linear.args[0])
    for norm in (norms if norms is not None else find_norms(program)):
        if norm.output is src:
            return Producer("norm", src, norm=norm)
    if is_linear(src):
        return Producer("linear", src, linear=src)
    if _is_call(src, (aten.mul.Tensor,)) and all(isinstance(a, fx.Node) for a in src.args[:2]):
        a, b = (strip_views(x) for x in src.args[:2])
        gated = [up for up, act in ((a, b), (b, a)) if is_linear(up) and _is_call(act, ACTIVATIONS)]
        if len(gated) == 1:
            return Producer("gated", src, linear=gated[0])
    return Producer("other", src)


# ---- residual stream ---------------------------------------------------------------------------
@dataclass
class ResidualStream:
    """The residual stream from the embeddings to the output.

    `nodes` carry the stream's value (embedding sums, residual adds, row views of them and, in
    post-norm models, the norm outputs that are added to). `readers` are pre-norms reading the
    stream; `direct_readers` linears reading it with no norm between (post-norm models);
    `writers` the linears whose outputs are added into it (o_proj, down_proj); `other_uses`
    whatever else consumes it. `final_norm`/`lm_head` are the norm and linear producing the
    output (None for encoders, whose output is the stream itself).
    """

    embeddings: list[fx.Node] = field(default_factory=list)
    nodes: list[fx.Node] = field(default_factory=list)
    adds: list[fx.Node] = field(default_factory=list)
    readers: list[Norm] = field(default_factory=list)
    in_stream_norms: list[Norm] = field(default_factory=list)
    direct_readers: list[fx.Node] = field(default_factory=list)
    writers: list[fx.Node] = field(default_factory=list)
    other_uses: list[fx.Node] = field(default_factory=list)
    final_norm: Norm | None = None
    lm_head: fx.Node | None = None
    output_is_stream: bool = False


def _token_embeddings(program: Program) -> list[fx.Node]:
    placeholders = set(program.nodes("placeholder"))
    return [n for n in program.nodes("call_function", aten.embedding.default)
            if isinstance(n.args[0], fx.Node) and n.args[0].op == "get_attr"
            and n.args[1] in placeholders]


def _output_values(program: Program) -> list[fx.Node]:
    out = next(iter(program.nodes("output")))
    flat = torch.utils._pytree.tree_leaves(out.args[0])
    return [strip_views(n) for n in flat if isinstance(n, fx.Node)]


def find_residual_stream(program: Program, norms: list[Norm] | None = None
                         ) -> ResidualStream | None:
    """Follow the stream from the token embedding; None when there is no token embedding."""
    starts = _token_embeddings(program)
    if not starts:
        return None
    norms = norms if norms is not None else find_norms(program)
    by_input: dict[fx.Node, list[Norm]] = {}
    for n in norms:
        by_input.setdefault(n.input, []).append(n)
    stream = ResidualStream(embeddings=list(starts))
    in_stream: set[fx.Node] = set()
    queue = list(starts)
    while queue:
        s = queue.pop(0)
        if s in in_stream:
            continue
        in_stream.add(s)
        stream.nodes.append(s)
        internal = {node: n for n in by_input.get(s, []) for node in n.nodes}
        for user in list(s.users):
            if user in in_stream:
                continue
            if user in internal:
                norm = internal[user]
                if norm in stream.readers or norm in stream.in_stream_norms:
                    continue
                if any(_is_call(u, ADDS) for u in value_uses(norm.output)):
                    stream.in_stream_norms.append(norm)  # post-norm: its output is the stream
                    queue.append(norm.output)
                else:
                    stream.readers.append(norm)
            elif is_row_view(user) or (_is_call(user, ADDS) and
                                       all(isinstance(a, fx.Node) for a in user.args[:2])):
                queue.append(user)
            elif is_linear(user) and _reaches(user, s, 0):
                stream.direct_readers.append(user)
            else:
                stream.other_uses.append(user)
    for node in stream.nodes:
        if not _is_call(node, ADDS):
            continue
        stream.adds.append(node)
        for operand in node.args[:2]:
            if operand in in_stream:
                continue
            src = strip_views(operand)
            if is_linear(src):
                stream.writers.append(src)
            elif _is_call(src, (aten.embedding.default,)):
                stream.embeddings.append(src)
            else:
                stream.other_uses.append(node)
    outputs = _output_values(program)
    stream.output_is_stream = any(o in in_stream for o in outputs)
    for norm in reversed(stream.readers):
        linears, _ = norm_consumers(norm)
        heads = [lin for lin in linears if lin in outputs]
        if heads:
            stream.final_norm, stream.lm_head = norm, heads[0]
            break
    pos = _positions(program)
    stream.readers.sort(key=lambda n: pos[n.output])
    return stream


def _positions(program: Program) -> dict[fx.Node, int]:
    return {node: i for i, node in enumerate(program.graph.nodes)}


# ---- decoder layers ----------------------------------------------------------------------------
@dataclass
class DecoderLayer:
    """One pre-norm decoder layer: its two norms and its linears by role.

    Roles: `q`, `k`, `v` (or fused `qkv`), `o`; `gate`, `up` (or fused `gate_up`; `up` alone
    for a non-gated MLP such as GPT-2's c_fc or OPT's fc1), `down`.
    """

    index: int
    attn_norm: Norm | None = None
    mlp_norm: Norm | None = None
    linears: dict[str, fx.Node] = field(default_factory=dict)

    def get(self, role: str) -> fx.Node | None:
        return self.linears.get(role)


def _backward_cone(node: fx.Node, stop: set[fx.Node]) -> set[fx.Node]:
    """Every node `node` depends on, not walking past the nodes in `stop`."""
    seen: set[fx.Node] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n in stop:
            continue
        todo.extend(a for a in n.all_input_nodes)
    return seen


def _attention_roles(readers: list[fx.Node], cone: set[fx.Node],
                     stop: set[fx.Node]) -> dict[str, fx.Node]:
    sdpa = [n for n in cone if _is_call(n, (aten.scaled_dot_product_attention.default,))]
    if len(sdpa) != 1 or len(sdpa[0].args) < 3:
        return {}
    roles: dict[str, fx.Node] = {}
    for name, arg in zip(("q", "k", "v"), sdpa[0].args[:3]):
        found = [r for r in readers if r in _backward_cone(arg, stop)]
        if len(found) != 1:
            return {}
        roles[name] = found[0]
    if roles["q"] is roles["k"] is roles["v"]:
        return {"qkv": roles["q"]}
    return roles if len({id(r) for r in roles.values()}) == 3 else {}


def _mlp_roles(program: Program, readers: list[fx.Node], writer: fx.Node) -> dict[str, fx.Node]:
    if len(readers) == 1:
        (r,) = readers
        fused = any(_is_call(u, (aten.chunk.default, aten.split.Tensor,
                                 aten.split_with_sizes.default)) for u in value_uses(r))
        return {"gate_up" if fused else "up": r}
    if len(readers) != 2:
        return {}
    producer = linear_producer(program, writer, norms=[])
    if producer.kind == "gated" and producer.linear in readers:
        up = producer.linear
        gate = readers[1] if readers[0] is up else readers[0]
        return {"gate": gate, "up": up}
    return {}


def decoder_layers(program: Program, stream: ResidualStream | None = None) -> list[DecoderLayer]:
    """Pre-norm blocks grouped into layers (an attention block opens a layer).

    A block is (reader norm, the linears reading it, the writer linear added back into the
    stream); a block whose writer depends on attention is an attention block, else an MLP.
    Returns [] for post-norm models (no reader norms) or graphs without a token embedding.
    """
    stream = stream if stream is not None else find_residual_stream(program)
    if stream is None:
        return []
    stop = set(stream.nodes)
    norm_of_output = {n.output: n for n in stream.readers}
    layers: list[DecoderLayer] = []
    pos = _positions(program)
    for writer in sorted(stream.writers, key=pos.__getitem__):
        cone = _backward_cone(writer, stop)
        norms = [norm_of_output[n] for n in cone if n in norm_of_output]
        if len(norms) != 1:
            continue
        norm = norms[0]
        readers = [r for r in norm_consumers(norm)[0] if r in cone]
        attention = any(_is_call(n, ATTENTION) for n in cone)
        if attention:
            layer = DecoderLayer(len(layers), attn_norm=norm)
            layers.append(layer)
            layer.linears.update(_attention_roles(readers, cone, stop | {norm.output}))
            layer.linears["o"] = writer
        else:
            if not layers or layers[-1].mlp_norm is not None:
                layers.append(DecoderLayer(len(layers)))
            layer = layers[-1]
            layer.mlp_norm = norm
            layer.linears.update(_mlp_roles(program, readers, writer))
            layer.linears["down"] = writer
    return layers


def iter_weight_uses(program: Program, target: str) -> Iterator[tuple[fx.Node, fx.Node]]:
    """(get_attr node, user) for every use of the tensor `target` anywhere in the graph."""
    for attr in program.graph.find_nodes(op="get_attr", target=target):
        for user in attr.users:
            yield attr, user

"""The residual stream of a Program's graph and the decoder layers around it.

Rotating the residual stream (rotate, QuaRot) folds an orthogonal Q into every place the stream
is read or written: the embeddings and the linears writing into the stream (o_proj, down_proj)
produce rotated values, the linears reading it through a norm undo the rotation, and any other
use of the stream would see rotated values and make the rewrite inexact. Names differ across
model families, so both are found by following the value from the token embedding:

- `find_residual_stream(program)`: embeddings, residual adds, the norms reading the stream,
  the linears writing into it, the final norm and the LM head. Multiplying the stream by one
  constant (Gemma's √hidden embedding scale) keeps it the stream; a sum of linear outputs each
  scaled per token (a dense MoE block's Σ_e r_e · down_e) makes every such linear a writer.
- `decoder_layers(program)`: per pre-norm block, the q/k/v/o/gate/up/down linears by role
  (e.g. the down projections, where rotate's online Hadamard goes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx

from qcompiler.graph_match import (ADDS, ATTENTION, is_call, is_linear, is_row_view, last_dim,
                                   linear_producer, reaches, strip_views, value_uses)
from qcompiler.graph_norms import Norm, find_norms, norm_consumers
from qcompiler.program import Program

aten = torch.ops.aten


# ---- residual stream ---------------------------------------------------------------------------
@dataclass
class ResidualStream:
    """The residual stream from the embeddings to the output.

    `nodes` carry the stream's value (embedding sums, residual adds, row views of them and, in
    post-norm models, the norm outputs that are added to). `readers` are pre-norms reading the
    stream; `direct_readers` linears reading it with no norm between (post-norm models);
    `writers` the linears whose outputs are added into it (o_proj, down_proj, MoE experts'
    down_proj), `writer_paths` the per-token scalings and sums between MoE experts and the
    residual add; `other_uses` whatever else consumes it. `final_norm`/`lm_head` are the norm
    and linear producing the output (None for encoders, whose output is the stream itself).
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
    writer_paths: list[fx.Node] = field(default_factory=list)


def _token_embeddings(program: Program) -> list[fx.Node]:
    placeholders = set(program.nodes("placeholder"))
    return [n for n in program.nodes("call_function", aten.embedding.default)
            if isinstance(n.args[0], fx.Node) and n.args[0].op == "get_attr"
            and n.args[1] in placeholders]


def _is_scalar_scale(node: fx.Node, stream: fx.Node) -> bool:
    """`stream · c` for one constant c (Gemma scales its embeddings by √hidden): it commutes
    with a rotation of the channels, so the product is still the stream."""
    if not is_call(node, (aten.mul.Tensor,)) or len(node.args) != 2:
        return False
    other = node.args[1] if node.args[0] is stream else node.args[0]
    if isinstance(other, (int, float)) and not isinstance(other, bool):
        return True
    val = other.meta.get("val") if isinstance(other, fx.Node) else None
    return (isinstance(other, fx.Node) and other.op == "get_attr"
            and isinstance(val, torch.Tensor) and val.numel() == 1)


def _weighted_sum(root: fx.Node) -> tuple[list[fx.Node], list[fx.Node]] | None:
    """(linears, the muls/adds between them and `root`) when `root` is a sum of linear outputs
    each scaled per token (a factor whose last dim is 1), as a dense MoE block computes
    Σ_e r_e · expert_e(x) (qcompiler/moe.py). Rotating each linear's output rotates the sum."""
    linears: list[fx.Node] = []
    path: list[fx.Node] = []
    todo = [root]
    while todo:
        node = strip_views(todo.pop())
        if is_linear(node):
            linears.append(node)
            continue
        if not (isinstance(node, fx.Node) and len(node.args) == 2
                and all(isinstance(a, fx.Node) for a in node.args)):
            return None
        a, b = node.args
        if is_call(node, ADDS):
            todo += [a, b]
        elif is_call(node, (aten.mul.Tensor,)) and (last_dim(a) == 1) != (last_dim(b) == 1):
            todo.append(b if last_dim(a) == 1 else a)
        else:
            return None
        path.append(node)
    return (linears, path) if linears and path else None


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
                if any(is_call(u, ADDS) for u in value_uses(norm.output)):
                    stream.in_stream_norms.append(norm)  # post-norm: its output is the stream
                    queue.append(norm.output)
                else:
                    stream.readers.append(norm)
            elif is_row_view(user) or _is_scalar_scale(user, s) or (
                    is_call(user, ADDS) and all(isinstance(a, fx.Node) for a in user.args[:2])):
                queue.append(user)
            elif is_linear(user) and reaches(user, s, 0):
                stream.direct_readers.append(user)
            else:
                stream.other_uses.append(user)
    for node in stream.nodes:
        if not is_call(node, ADDS):
            continue
        stream.adds.append(node)
        for operand in node.args[:2]:
            if operand in in_stream:
                continue
            src = strip_views(operand)
            weighted = None if is_linear(src) else _weighted_sum(src)
            if is_linear(src):
                stream.writers.append(src)
            elif is_call(src, (aten.embedding.default,)):
                stream.embeddings.append(src)
            elif weighted is not None:  # MoE: expert outputs weighted by the router, summed
                stream.writers += weighted[0]
                stream.writer_paths += weighted[1]
            else:
                stream.other_uses.append(node)
    allowed = set(stream.adds) | set(stream.writer_paths)
    for node in stream.writer_paths:  # a partial sum used elsewhere would see rotated values
        stray = [u for u in value_uses(node) if u not in allowed]
        if stray:
            stream.other_uses.append(stray[0])
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
    for a non-gated MLP such as GPT-2's c_fc or OPT's fc1), `down`. An MoE block has one MLP
    per expert behind one norm: the first expert's linears take the plain roles, expert k's
    the roles suffixed `.k` (`down.3`); `downs()` lists every down.
    """

    index: int
    attn_norm: Norm | None = None
    mlp_norm: Norm | None = None
    linears: dict[str, fx.Node] = field(default_factory=dict)

    def get(self, role: str) -> fx.Node | None:
        return self.linears.get(role)

    def downs(self) -> list[fx.Node]:
        """Every linear writing the MLP block back into the stream (one per MoE expert)."""
        return [n for r, n in self.linears.items() if r == "down" or r.startswith("down.")]


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
    sdpa = [n for n in cone if is_call(n, (aten.scaled_dot_product_attention.default,))]
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
        fused = any(is_call(u, (aten.chunk.default, aten.split.Tensor,
                                 aten.split_with_sizes.default)) for u in value_uses(r))
        return {"gate_up" if fused else "up": r}
    if len(readers) != 2:
        return {}
    producer = linear_producer(writer, norms=[])
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
        attention = any(is_call(n, ATTENTION) for n in cone)
        if attention:
            layer = DecoderLayer(len(layers), attn_norm=norm)
            layers.append(layer)
            layer.linears.update(_attention_roles(readers, cone, stop | {norm.output}))
            layer.linears["o"] = writer
        elif layers and layers[-1].mlp_norm is norm:  # one more writer of the same block: an
            layer = layers[-1]                          # MoE expert (qcompiler/moe.py)
            k = len(layer.downs())
            for role, node in _mlp_roles(program, readers, writer).items():
                layer.linears.setdefault(f"{role}.{k}", node)
            layer.linears[f"down.{k}"] = writer
        else:
            if not layers or layers[-1].mlp_norm is not None:
                layers.append(DecoderLayer(len(layers)))
            layer = layers[-1]
            layer.mlp_norm = norm
            layer.linears.update(_mlp_roles(program, readers, writer))
            layer.linears["down"] = writer
    return layers

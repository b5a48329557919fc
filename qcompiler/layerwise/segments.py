"""Cut a decoder's graph into per-layer pieces that run one after another.

The residual stream (qcompiler/residual_stream.py) enters decoder layer i at the input of its
first norm; those values are the cut points. `split_segments` returns the prefix (inputs,
embeddings, rotary tables, masks: everything up to the first cut), one segment per decoder layer
and the suffix (final norm, LM head, output), each with the values it reads from earlier pieces
(`inputs`), the weights it reads (`attrs`) and the values later pieces read from it (`outputs`).
`segment_program` turns a piece into a standalone Program whose placeholders are those inputs,
sharing the whole program's tensors, so the calibrated passes and the statistics of
qcompiler/calibration.py run on one layer exactly as they do on a whole model.

Pieces are cut by position in the graph's (topological) node order, so values computed once and
used by every layer (the mask, cos/sin) are prefix outputs carried along; any other value that
crosses a cut is carried the same way (the rule is liveness, not a model-specific list).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.fx as fx

from qcompiler.errors import QCompilerError
from qcompiler.program import Program
from qcompiler.residual_stream import decoder_layers, find_residual_stream

NEEDS = ("a layer-wise compile needs a pre-norm decoder whose residual stream can be followed "
         "(Llama, Qwen2, Mistral); compile this model without streaming (--no-stream)")


@dataclass
class Segment:
    """One piece of the graph: `index` -1 is the prefix, len(layers) the suffix."""

    index: int
    nodes: list[fx.Node] = field(default_factory=list)
    inputs: list[fx.Node] = field(default_factory=list)
    attrs: list[fx.Node] = field(default_factory=list)
    outputs: list[fx.Node] = field(default_factory=list)

    def weights(self) -> list[str]:
        return [str(a.target) for a in self.attrs]


def split_segments(program: Program) -> list[Segment]:
    """[prefix, layer 0, ..., layer L-1, suffix] (module docstring)."""
    stream = find_residual_stream(program)
    layers = decoder_layers(program, stream) if stream is not None else []
    if not layers or stream is None or stream.final_norm is None:
        raise QCompilerError(NEEDS)
    cuts = [(layer.attn_norm or layer.mlp_norm).input for layer in layers]
    cuts.append(stream.final_norm.input)
    order = {n: i for i, n in enumerate(program.graph.nodes)}
    positions = [order[c] for c in cuts]
    if any(b <= a for a, b in zip(positions, positions[1:])):
        raise QCompilerError(NEEDS)
    segments = [Segment(i) for i in range(-1, len(layers) + 1)]
    where: dict[fx.Node, int] = {}
    for node in program.graph.nodes:
        if node.op == "get_attr":
            continue
        pos = order[node]
        if node.op == "placeholder":  # the model inputs: fed to the prefix
            where[node] = -1
            segments[0].inputs.append(node)
            continue
        index = sum(1 for p in positions if p < pos) - 1
        where[node] = index
        segments[index + 1].nodes.append(node)
    for node, index in where.items():
        if node.op == "placeholder":
            continue
        seg = segments[index + 1]
        for arg in node.all_input_nodes:
            if arg.op == "get_attr":
                if arg not in seg.attrs:
                    seg.attrs.append(arg)
            elif where[arg] != index:
                if where[arg] > index:
                    raise QCompilerError(NEEDS)
                if arg not in seg.inputs:
                    seg.inputs.append(arg)
                source = segments[where[arg] + 1]
                if arg not in source.outputs:
                    source.outputs.append(arg)
    return segments


def last_uses(segments: list[Segment]) -> dict[fx.Node, int]:
    """For each value crossing a cut, the index of the last segment that reads it."""
    out: dict[fx.Node, int] = {}
    for seg in segments:
        for node in seg.inputs:
            out[node] = max(out.get(node, -1), seg.index)
    return out


def segment_program(program: Program, seg: Segment) -> Program:
    """A standalone Program computing `seg` from its inputs; it shares the program's tensors as
    they are now (set the layer's real weights first)."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in seg.inputs:
        env[node] = graph.placeholder(node.name)
        env[node].meta = dict(node.meta)
    for attr in seg.attrs:
        env[attr] = graph.get_attr(str(attr.target))
        env[attr].meta = dict(attr.meta)
    output = None
    for node in seg.nodes:
        if node.op == "output":
            output = node
            continue
        env[node] = graph.node_copy(node, env.__getitem__)
    if output is not None:
        graph.node_copy(output, env.__getitem__)
    else:
        graph.output(tuple(env[n] for n in seg.outputs))
    gm = fx.GraphModule(program.gm, graph)
    meta = {k: program.meta[k] for k in ("config", "architecture") if k in program.meta}
    return Program(gm, (), tuple(n.name for n in seg.inputs), [], "module",
                   f"{program.source} segment {seg.index}", meta)

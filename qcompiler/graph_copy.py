"""Copy an fx graph with chosen node names, through torch.fx's public API only.

torch.fx has no public way to rename a node in place (`Node._rename` is private and may change
between releases). A fresh graph takes any name at `create_node(..., name=...)`, so capture
(which names parameters after their dotted paths and placeholders after the model's inputs)
copies the exported graph node by node instead. The copy has the default code generator, so it
also drops torch.export's pytree calling convention, as capture wants.
"""

from __future__ import annotations

import torch.fx as fx


def copy_with_names(graph: fx.Graph, names: dict[fx.Node, str]) -> fx.Graph:
    """A copy of `graph` (same nodes, order, targets, arguments and meta) in which each node in
    `names` is called by its new name and every other node keeps its own. A name already taken
    gets the usual `_1` suffix."""
    out = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        args = fx.node.map_arg(node.args, env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
        new = out.create_node(node.op, node.target, args, kwargs,  # type: ignore[arg-type]
                              name=names.get(node, node.name), type_expr=node.type)
        new.meta = dict(node.meta)
        env[node] = new
    return out

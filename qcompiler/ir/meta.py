"""Shape/dtype inference for nodes created by passes.

torch.export annotates every node with `meta["val"]`, a FakeTensor whose sizes may be symbolic
(the dynamic sequence length). A pass that inserts a node calls `infer_node_meta(node)`, which
runs the op on its inputs' FakeTensors in the same fake mode, so the new node gets the same kind
of annotation (symbolic sizes included) and the printer never has to guess.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch._guards import detect_fake_mode
from torch.utils._pytree import tree_map


def infer_node_meta(node: fx.Node) -> Any:
    """Fill `node.meta["val"]` from its inputs' vals; returns the val (None if not inferable)."""
    if node.op == "get_attr":
        value = _fetch(node.graph.owning_module, node.target)
        mode = _graph_fake_mode(node.graph)
        if mode is not None and isinstance(value, torch.Tensor):
            node.meta["val"] = mode.from_tensor(value, static_shapes=True)
        return node.meta.get("val")
    if node.op != "call_function":
        return node.meta.get("val")

    def val_of(a: Any) -> Any:
        if isinstance(a, fx.Node):
            if "val" not in a.meta:
                infer_node_meta(a)
            return a.meta.get("val")
        return a

    args = tree_map(val_of, node.args)
    kwargs = tree_map(val_of, node.kwargs)
    mode = detect_fake_mode((args, kwargs)) or _graph_fake_mode(node.graph)
    if mode is None:
        return None
    target = _SYMBOLIC_REFS.get(node.target, node.target)
    with mode:
        node.meta["val"] = target(*args, **kwargs)
    return node.meta["val"]


# Ops whose fake kernel turns symbolic sizes into ints (which pins the dynamic sequence length to
# the example's, for the whole graph), mapped to their torch._refs decomposition, which keeps
# them symbolic as torch.export's tracing does: lower-datatype's K padding (aten.constant_pad_nd).
_SYMBOLIC_REFS: dict[Any, Any] = {
    torch.ops.aten.constant_pad_nd.default: lambda *a, **k: _refs().constant_pad_nd(*a, **k),
}


def _refs() -> Any:
    import torch._refs

    return torch._refs


def _graph_fake_mode(graph: fx.Graph) -> Any:
    """The fake mode of the graph's annotations: that of the first node val that has one
    (torch.export gives every val the same mode). It stops at that node: lower-datatype asks once
    per new get_attr, and a scan of every val each time made its rewrite quadratic in the graph
    (most of a SmolLM2-135M lowering)."""
    for n in graph.nodes:
        if "val" in n.meta:
            mode = detect_fake_mode([n.meta["val"]])
            if mode is not None:
                return mode
    return None


def _fetch(root: torch.nn.Module, target: str) -> Any:
    obj: Any = root
    for part in str(target).split("."):
        obj = getattr(obj, part)
    return obj

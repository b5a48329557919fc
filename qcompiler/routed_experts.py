"""Run MoE experts on their routed tokens only, at run time; the artifact keeps the dense form.

A captured MoE block (qcompiler/moe.py) runs every expert on every token and scales expert e's
output by `routing[:, e]`, the router's weight, which is zero where the token was not routed
to e: E/k times the expert FLOPs (4x for Mixtral's 8/top-2, 16x for Qwen3-MoE's 128/top-8).
`route_experts(gm)` rewrites a loaded graph in place: each expert's chain

    x -> linear(gate_up_e) -> chunk -> act -> mul -> linear(down_e) = y_e;   mul(y_e, w_e)

(w_e = `unsqueeze(select(routing, 1, e), 1)`) becomes one call of `routed_rows`, which takes the
rows where w_e != 0, runs the chain on them alone, scales them and scatters them into zeros.
Same numbers: the rows left out would contribute exact zeros (a finite y times 0), so only a
matmul's rounding at another row count can differ (1e-6 relative; the decode program's probe
check compares the two). A chain qualifies only when every op in it works row by row
(linears, quantized linears, per-token activation quantization, elementwise ops, splits of the
last dimension) and it reads one tensor from outside besides constants; anything else stays
dense.

Eager only: the number of routed rows is data, which a CUDA graph cannot capture, so the
runtime applies this on the CPU (LoadedModel.forward and the CPU decode program) and leaves the
CUDA decode path, which replays CUDA graphs, dense. `QC_ROUTED_EXPERTS=0` keeps every path dense.
"""

from __future__ import annotations

import copy
import operator
import os
from typing import Any

import torch
import torch.fx as fx

aten = torch.ops.aten

# ops that act on each row (token) on its own, so running them on a subset of rows gives those
# rows' results
ROW_WISE = {
    aten.linear.default, aten.silu.default, aten.gelu.default, aten.relu.default,
    aten.sigmoid.default, aten.tanh.default, aten.mul.Tensor, aten.add.Tensor,
    aten.sub.Tensor, aten.div.Tensor, aten.neg.default, aten.pow.Tensor_Scalar,
    aten.clamp.default, aten._to_copy.default, aten.to.dtype, operator.getitem,
}
LAST_DIM_SPLITS = {aten.chunk.default: 2, aten.split.Tensor: 2, aten.split_with_sizes.default: 2,
                   aten.slice.Tensor: 1}  # op -> index of its `dim` argument
ROUTING_VIEWS = {aten.unsqueeze.default, aten.view.default, aten.reshape.default,
                 aten._to_copy.default, aten.to.dtype}


def routed_rows(x: torch.Tensor, weight: torch.Tensor, chain: fx.GraphModule,
                out_features: int) -> torch.Tensor:
    """chain(x) * weight, computed on the rows where weight != 0 only (zeros elsewhere)."""
    rows = torch.nonzero(weight.reshape(-1)).reshape(-1)
    if rows.numel():
        y = chain(x.index_select(0, rows)) * weight.index_select(0, rows)
        out = y.new_zeros((x.shape[0], *y.shape[1:]))
        return out.index_copy_(0, rows, y)
    return x.new_zeros((x.shape[0], out_features))


def enabled() -> bool:
    return os.environ.get("QC_ROUTED_EXPERTS", "1") != "0"


def routed_copy(gm: fx.GraphModule) -> fx.GraphModule | None:
    """A copy of `gm` (sharing its tensors) with its experts routed, or None when it has none."""
    if not enabled():
        return None
    routed = copy_graph_module(gm)
    return routed if route_experts(routed) else None


def copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of `gm`'s graph over the same tensors (what a runtime rewrite works on)."""
    return fx.GraphModule(gm, copy.deepcopy(gm.graph))


def route_experts(gm: fx.GraphModule) -> int:
    """Rewrite every qualifying expert chain of `gm` (module docstring); returns how many."""
    graph = gm.graph
    done = 0
    for mul in list(graph.nodes):
        if mul.op != "call_function" or mul.target is not aten.mul.Tensor or len(mul.args) != 2:
            continue
        for out, weight in (mul.args, mul.args[::-1]):
            if isinstance(out, fx.Node) and set(out.users) == {mul} and _routing_weight(weight):
                chain = _chain(out, mul)
                if chain is not None and _rewrite(gm, mul, out, weight, *chain):
                    done += 1
                break
    if done:
        graph.eliminate_dead_code()
        gm.recompile()
    return done


def _routing_weight(weight: Any) -> bool:
    """`weight` is one expert's column of a [T, E] routing tensor, viewed as [T, 1]."""
    if not isinstance(weight, fx.Node):
        return False
    node = weight
    while isinstance(node, fx.Node) and node.op == "call_function" and \
            node.target in ROUTING_VIEWS:
        node = node.args[0]
    if not (isinstance(node, fx.Node) and node.op == "call_function"
            and node.target is aten.select.int and node.args[1] == 1):
        return False
    routing = node.args[0]
    val = routing.meta.get("val") if isinstance(routing, fx.Node) else None
    column = weight.meta.get("val")
    return (val is not None and val.dim() == 2 and column is not None
            and tuple(column.shape[1:]) == (1,))


def _chain(out: fx.Node, mul: fx.Node) -> tuple[list[fx.Node], fx.Node] | None:
    """(the expert's nodes in graph order, its one outside input) or None when `out`'s
    producers are not a private, row-wise chain."""
    members: set[fx.Node] = set()
    todo = [out]
    inputs: set[fx.Node] = set()
    while todo:
        node = todo.pop()
        if node in members:
            continue
        if node.op == "get_attr":
            continue  # a constant: the chain reads it as it is
        private = all(u in members or u is mul or _feeds(u, members, out) for u in node.users)
        if node is not out and not private or node.op != "call_function":
            inputs.add(node)
            continue
        if not _row_wise(node):
            return None
        members.add(node)
        todo.extend(node.all_input_nodes)
    inputs -= members
    if len(inputs) != 1:
        return None
    (x,) = inputs
    val = x.meta.get("val")
    if val is None or val.dim() != 2:
        return None  # the dense experts run on [T, H] tokens (moe.dense_experts_forward)
    order = [n for n in out.graph.nodes if n in members]
    return order, x


def _feeds(user: fx.Node, members: set[fx.Node], out: fx.Node) -> bool:
    """Whether `user` lies on a path to `out` (so it is, or will be, a member)."""
    seen, todo = set(), [user]
    while todo:
        node = todo.pop()
        if node is out or node in members:
            return True
        if node in seen:
            continue
        seen.add(node)
        todo.extend(u for u in node.users if u.op == "call_function")
        if len(seen) > 64:  # an expert chain is a handful of ops
            return False
    return False


def _row_wise(node: fx.Node) -> bool:
    target = node.target
    if target in ROW_WISE:
        return True
    if target in LAST_DIM_SPLITS:
        pos = LAST_DIM_SPLITS[target]
        dim = node.args[pos] if len(node.args) > pos else node.kwargs.get("dim", 0)
        val = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
        return val is not None and dim in (-1, val.dim() - 1)
    op = str(target)  # qc ops: "qc.linear_razer4.default", "qc.quantize_act.default"
    if op.startswith("qc.linear_"):
        return True
    if op.startswith("qc.quantize_act"):  # per token only: a per-tensor scale sees every row
        return node.kwargs.get("granularity", "token") == "token"
    return False


def _rewrite(gm: fx.GraphModule, mul: fx.Node, out: fx.Node, weight: fx.Node,
             members: list[fx.Node], x: fx.Node) -> bool:
    val = mul.meta.get("val")
    if val is None:
        return False
    sub = fx.Graph()
    env = {x: sub.placeholder("x")}
    env[x].meta = {k: v for k, v in x.meta.items() if k == "val"}  # its type, for the printer
    for node in members:
        for arg in node.all_input_nodes:
            if arg not in env and arg.op == "get_attr":
                env[arg] = sub.get_attr(str(arg.target))
        env[node] = sub.node_copy(node, lambda n: env[n])
    sub.output(env[out])
    chain = fx.GraphModule(gm, sub)
    name = f"routed_{out.name}"
    gm.add_submodule(name, chain)
    graph = gm.graph
    with graph.inserting_before(mul):
        module = graph.get_attr(name)
        new = graph.call_function(routed_rows, (x, weight, module, int(val.shape[-1])))
    new.meta["val"] = val
    mul.replace_all_uses_with(new)
    graph.erase_node(mul)
    return True

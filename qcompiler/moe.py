"""Mixture-of-experts capture: every expert becomes plain `aten.linear`s with constant weights.

Transformers (5.x) stores the experts of an MoE block (Mixtral, Qwen3-MoE, DeepSeek, ...) as
fused 3-D tensors, `experts.gate_up_proj [E, 2I, H]` and `experts.down_proj [E, H, I]`, and runs
them through an "experts implementation" picked at load time. None of them exports as linears:
`grouped_mm` (the default) calls the custom op `transformers::grouped_mm_fallback`, which an
artifact cannot resolve without transformers' registration; `batched_mm` gathers weights per
token (`W[expert_ids]`, then `bmm`); `eager` loops over the experts hit, a data-dependent loop.
Each left the experts in fp32 with nothing said, since lower-datatype quantizes linears only.

Capture therefore registers one more implementation, `qc_dense`, and selects it for the
export only (`dense_experts`, which restores the model's own afterwards): every expert runs on
every token as `F.linear(x, W[e])` and its output is scaled by the router's weight for that
expert, which is zero where the token was not routed to it. That is the routed sum of the top-k
weighted expert outputs (equal up to fp summation order; tests/moe checks 1e-5) written in
plain aten ops. `split_expert_weights` then replaces each `select(W, 0, e)` feeding a linear by
a constant of its own, `...experts.<e>.gate_up_proj.weight` [2I, H] (transposed layouts are
transposed once, biases likewise), so each expert is an ordinary linear that lower-datatype,
GPTQ, clip, ... treat like any other, and the fused 3-D tensors disappear from the program.

The price is compute, not accuracy: the stored graph runs all E experts on each token instead of
its top k (E/k times the expert FLOPs: 4x for Mixtral's 8/top-2, 16x for Qwen3-MoE's
128/top-8). The runtime's CPU graphs (forward and the decode program) run each expert on its
routed tokens only (qcompiler/routed_experts.py, same logits to 1e-6); the CUDA decode path,
which replays CUDA graphs, stays dense. This is the route that exports, quantizes, saves and
loads without transformers. A calibration pass sees every token at every expert, unweighted by
the router: llm-compressor's default too (`calibrate_all_experts=True`), because a small
calibration set routes few or no tokens to some experts, and GPTQ on a Hessian of a handful of
tokens (or none: GPTQ zeroes columns that never fired) is worse than on all of them.
The router (`mlp.gate`, N = E) stays a linear too; lower-datatype's default skip keeps it in fp.
The block reads its normed input only through linears (router, gate_up) and writes
Σ_e r_e · down_e(...) into the residual stream, so fold-norms folds its norm and rotate treats
every down_e as a stream writer (qcompiler/residual_stream.py).
A streamed capture (weights not loaded yet) gets the same per-expert linears, each a stand-in
whose source is that expert's own checkpoint tensors (every Hub MoE checkpoint stores experts
apart; qcompiler/checkpoint_keys.py), so each is read when its layer is. Where the checkpoint
holds the fused 3-D tensor itself, or the layout is transposed, the experts stay in fp and
lower-datatype says so on stderr and in the report (slicing a lazily loaded tensor is not done).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.fx as fx
import torch.nn.functional as F

from qcompiler.program import Program

IMPLEMENTATION = "qc_dense"
aten = torch.ops.aten
TRANSPOSES = (aten.t.default, aten.transpose.int, aten.permute.default, aten.numpy_T.default)


def _expert_linear(x: torch.Tensor, weights: torch.Tensor, biases: torch.Tensor | None, e: int,
                   transposed: bool) -> torch.Tensor:
    w = weights[e].t() if transposed else weights[e]
    return F.linear(x, w, None if biases is None else biases[e])


def dense_experts_forward(self: Any, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                          top_k_weights: torch.Tensor) -> torch.Tensor:
    """The experts of one MoE block as E dense expert MLPs weighted by the router (see above).

    `self` is a transformers experts module (`@use_experts_implementation`): its `has_gate`,
    `has_bias`, `is_transposed`, `has_post_expert_norm` and `_apply_gate` describe the layout.
    """
    tokens = hidden_states.shape[0]
    routing = top_k_weights.new_zeros(tokens, self.num_experts)
    routing = routing.scatter_add(1, top_k_index, top_k_weights)  # [T, E], 0 where not routed
    bias = getattr(self, "has_bias", False)
    transposed = getattr(self, "is_transposed", False)
    out = None  # not zeros_like(x): that would be one more use of the normed input, which
    for e in range(self.num_experts):  # fold-norms and rotate need it read by linears only
        if getattr(self, "has_gate", True):
            h = _expert_linear(hidden_states, self.gate_up_proj,
                               self.gate_up_proj_bias if bias else None, e, transposed)
            h = self._apply_gate(h)
        else:
            h = self.act_fn(_expert_linear(hidden_states, self.up_proj,
                                           self.up_proj_bias if bias else None, e, transposed))
        h = _expert_linear(h, self.down_proj, self.down_proj_bias if bias else None, e,
                           transposed)
        if getattr(self, "has_post_expert_norm", False):
            h = self.post_expert_norm(h)
        weighted = h * routing[:, e, None].to(h.dtype)
        out = weighted if out is None else out + weighted
    return out.to(hidden_states.dtype)


def _experts_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformers experts modules of `model` (the ones an experts implementation drives)."""
    return [m for m in model.modules()
            if hasattr(m, "_apply_gate") and hasattr(m, "num_experts")
            and isinstance(getattr(m, "down_proj", None), torch.Tensor)]


def _supported(module: torch.nn.Module) -> bool:
    fused = "gate_up_proj" if getattr(module, "has_gate", True) else "up_proj"
    return all(isinstance(getattr(module, name, None), torch.Tensor)
               and getattr(module, name).dim() == 3 for name in (fused, "down_proj"))


@contextlib.contextmanager
def dense_experts(model: torch.nn.Module) -> Iterator[bool]:
    """Run `model`'s MoE experts as `qc_dense` inside the block; yields whether it had any.

    Models without MoE blocks, or with an experts layout this implementation does not know, are
    left alone (lower-datatype then lists their expert weights as kept in fp).
    """
    experts = _experts_modules(model)
    setter = getattr(model, "set_experts_implementation", None)
    if not experts or setter is None or not all(_supported(m) for m in experts):
        yield False
        return
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    ALL_EXPERTS_FUNCTIONS.register(IMPLEMENTATION, dense_experts_forward)
    previous = model.get_experts_implementation()
    setter(IMPLEMENTATION)
    try:
        yield True
    finally:
        setter(previous)


# ---- per-expert constants ----------------------------------------------------------------------
def _expert_source(node: Any) -> tuple[fx.Node, int, list[fx.Node]] | None:
    """(get_attr of a 3-D constant, expert index, transposes applied after the select) when
    `node` is `select(W, 0, e)` of a constant, possibly followed by 2-D transposes."""
    transposes: list[fx.Node] = []
    while (isinstance(node, fx.Node) and node.op == "call_function"
           and node.target in TRANSPOSES):
        transposes.append(node)
        node = node.args[0]
    if not (isinstance(node, fx.Node) and node.op == "call_function"
            and node.target is aten.select.int):
        return None
    src, dim, index = node.args[:3]
    if not (isinstance(src, fx.Node) and src.op == "get_attr" and dim == 0
            and isinstance(index, int)):
        return None
    return src, index, transposes[::-1]


def _apply(node: fx.Node, value: torch.Tensor) -> torch.Tensor:
    if node.target is aten.permute.default:
        return value.permute(*node.args[1])
    if node.target is aten.transpose.int:
        return value.transpose(*node.args[1:3])
    return value.t()


def _expert_name(target: str, index: int, role: str) -> str:
    """`m.experts.gate_up_proj` -> `m.experts.3.gate_up_proj.weight` (`_bias` -> `.bias`)."""
    owner, _, attr = target.rpartition(".")
    kind = "bias" if attr.endswith("_bias") else role
    stem = attr.removesuffix("_bias")
    return f"{owner}.{index}.{stem}.{kind}" if owner else f"{index}.{stem}.{kind}"


def _stand_in(value: torch.Tensor) -> bool:
    """A streaming capture's shape-only stand-in (one element, stride 0; qcompiler.driver)."""
    return value.numel() > 1 and all(s == 0 for s in value.stride())


def _streamed_expert(program: Program, target: str, index: int,
                     transposes: list[fx.Node]) -> list[Any] | None:
    """`[shards, keys]` of expert `index` of the streamed 3-D tensor `target` when its
    checkpoint stores the experts apart (qcompiler/checkpoint_keys.py: a stack entry), the
    slice is used as stored (no transpose) and so can be read on its own; else None."""
    entry = (program.meta.get("lazy_tensors") or {}).get(target)
    if entry is None or transposes or getattr(entry, "finish", None) is not None:
        return None
    shards, keys = entry
    if isinstance(keys, str) or not keys or isinstance(keys[0], str):
        return None  # one 3-D checkpoint tensor: slicing it lazily is not done
    return [shards[index], keys[index]]


def split_expert_weights(program: Program) -> int:
    """Give every linear whose weight (or bias) is one expert's slice of a 3-D constant its own
    constant; returns how many operands were replaced. Unused 3-D tensors are deleted."""
    from qcompiler.ir.meta import infer_node_meta

    graph = program.graph
    made: dict[tuple[fx.Node, ...], fx.Node] = {}
    sources: set[str] = set()
    chains: list[fx.Node] = []
    replaced = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.linear.default:
            continue
        for pos, role in ((1, "weight"), (2, "bias")):
            operand = node.args[pos] if len(node.args) > pos else None
            found = _expert_source(operand)
            if found is None:
                continue
            src, index, transposes = found
            lazy_entry = None
            if _stand_in(program.get_tensor(str(src.target))):
                lazy_entry = _streamed_expert(program, str(src.target), index, transposes)
                if lazy_entry is None:
                    continue  # no per-expert source: lower-datatype reports it kept in fp
            key = (src, index, *transposes)
            if key not in made:
                if lazy_entry is not None:  # a stand-in of the slice, read when needed
                    whole = program.get_tensor(str(src.target))
                    value = torch.zeros((), dtype=whole.dtype).expand(tuple(whole.shape[1:]))
                else:
                    value = program.get_tensor(str(src.target)).detach()[index]
                    for t in transposes:
                        value = _apply(t, value)
                    value = value.contiguous().clone()
                name = program.add_tensor(_expert_name(str(src.target), index, role), value)
                if lazy_entry is not None:
                    program.meta["lazy_tensors"][name] = lazy_entry
                with graph.inserting_before(node):
                    attr = graph.create_node("get_attr", name, name=name.replace(".", "_"))
                infer_node_meta(attr)
                made[key] = attr
            node.replace_input_with(operand, made[key])
            chains.append(operand)
            sources.add(str(src.target))
            replaced += 1
    if replaced:
        erased: set[fx.Node] = set()
        for start in chains:  # the now unused select/transpose chains and 3-D get_attrs
            todo = [start]
            while todo:
                dead = todo.pop()
                if dead not in erased and not dead.users and dead.op in ("call_function",
                                                                         "get_attr"):
                    todo.extend(dead.all_input_nodes)
                    graph.erase_node(dead)
                    erased.add(dead)
        used = {str(n.target) for n in graph.nodes if n.op == "get_attr"}
        for target in sources - used:
            program.delete_tensor(target)
            (program.meta.get("lazy_tensors") or {}).pop(target, None)
        program.recompile()
    return replaced

"""`fold-norms`: move RMSNorm/LayerNorm γ and β into the linears that read the norm.

    norm(x) = n(x) ⊙ γ + β   feeding   y = norm(x) Wᵀ + b
    ⇒  y = n(x) (W diag γ)ᵀ + (b + W β)

After folding, every norm has γ = 1 and β = 0 (the parameters stay, as ones and zeros, so later
passes such as smoothing still have a per-channel scale to divide; Gemma's RMSNorm scales by
γ = 1 + w, which is folded the same way and left with w = 0), and the scale lives in the
weights that get quantized. Two things depend on it: an RMSNorm with unit weight commutes with
an orthogonal rotation of the channels (what `rotate` needs), and outlier channels of γ stop
hiding outside the quantized weights.

Folding is exact only where every use of the norm's output is the input of a linear (pre-norm
models: Llama, Qwen2, Mistral, Phi-3, GPT-2, OPT; q/k/v or gate/up all read one norm, the final
norm feeds lm_head). In post-norm models (BERT, MiniLM) the output also feeds the residual add,
so such norms are kept and listed in the `norms-kept` statistic and a `-v` note.

The pass matches norms and their linears structurally, so it needs a canonicalized graph
(same-dtype casts and metadata asserts look like other uses): without one it fails with "run
canonicalize first" instead of silently folding nothing.

A weight shared with another use (GPT-2/OPT/stories260k tie lm_head to the token embedding) is
untied first: the embedding gets its own copy under its module's name, lm_head keeps its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from qcompiler.graph_match import iter_weight_uses
from qcompiler.graph_norms import Norm, find_norms, norm_consumers
from qcompiler.ir.meta import infer_node_meta
from qcompiler.pass_registry import register_pass
from qcompiler.passes.canonicalize import require_canonical
from qcompiler.passes_base import Pass, PassContext, PassResult
from qcompiler.program import Program

aten = torch.ops.aten


# ---- tensors owned by one node -----------------------------------------------------------------
def new_tensor(program: Program, name: str, value: torch.Tensor, like: Any = None) -> str:
    """Add `value` under a unique name derived from `name`, a Parameter if `like` is one."""
    name = program.add_tensor(name, value)
    if isinstance(like, torch.nn.Parameter):
        owner, attr = program.owner_of(name)
        owner._parameters[attr] = torch.nn.Parameter(owner._buffers.pop(attr),
                                                     requires_grad=False)
    return name


def new_get_attr(program: Program, name: str, before: fx.Node) -> fx.Node:
    with program.graph.inserting_before(before):
        node = program.graph.create_node("get_attr", name, name=name.replace(".", "_"))
    infer_node_meta(node)
    return node


def _module_name(node: fx.Node, program: Program) -> str | None:
    """The dotted module path of the node's innermost module, as the program names tensors."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    parts = list(stack.values())[-1][0].split(".")
    while parts and not hasattr(program.gm, parts[0]):  # capture wraps the model (`hf.`)
        parts = parts[1:]
    return ".".join(parts) or None


def private_weight(program: Program, linear: fx.Node) -> str:
    """The name of a weight tensor that only `linear` uses, untying it first if needed.

    Tied embeddings move to a copy named after the embedding module (so `lm_head.weight` stays
    lm_head's, which `lower-datatype`'s default skip list relies on); any other sharing gives
    the linear a copy.
    """
    attr = linear.args[1]
    target = str(attr.target)
    others = [(a, u) for a, u in iter_weight_uses(program, target) if u is not linear]
    if not others:
        return target
    value = program.get_tensor(target)
    if all(u.target is aten.embedding.default and u.args[0] is a for a, u in others):
        for a, user in others:
            base = _module_name(user, program) or "embed_tokens"
            name = new_tensor(program, f"{base}.weight", value.clone(), like=value)
            user.replace_input_with(a, new_get_attr(program, name, user))
        return target
    name = new_tensor(program, target, value.clone(), like=value)
    linear.replace_input_with(attr, new_get_attr(program, name, linear))
    return name


def _private_norm_param(program: Program, norm: Norm, attr: fx.Node) -> str:
    """The name of `attr`'s tensor, copied first when something outside the norm uses it."""
    target = str(attr.target)
    if all(u in norm.nodes for _, u in iter_weight_uses(program, target)):
        return target
    value = program.get_tensor(target)
    name = new_tensor(program, target, value.clone(), like=value)
    for user in [u for u in attr.users if u in norm.nodes]:
        user.replace_input_with(attr, new_get_attr(program, name, user))
    return name


# ---- folding -----------------------------------------------------------------------------------
def fold_into_linear(program: Program, linear: fx.Node, gamma: torch.Tensor | None,
                     beta: torch.Tensor | None) -> None:
    """W ← W diag γ and b ← b + W β (computed in float64, stored in W's dtype)."""
    target = private_weight(program, linear)
    w = program.get_tensor(target)
    w64 = w.detach().to(torch.float64)
    if beta is not None and bool((beta != 0).any()):
        shift = w64 @ beta.to(torch.float64)
        bias = linear.args[2] if len(linear.args) > 2 else linear.kwargs.get("bias")
        if isinstance(bias, fx.Node):
            b_target = str(bias.target)
            if any(u is not linear for _, u in iter_weight_uses(program, b_target)):
                b_target = new_tensor(program, b_target, program.get_tensor(b_target).clone())
                linear.replace_input_with(bias, new_get_attr(program, b_target, linear))
            b = program.get_tensor(b_target)
            program.set_tensor(b_target, (b.detach().to(torch.float64) + shift).to(b.dtype))
        else:
            b_name = new_tensor(program, target.removesuffix(".weight") + ".bias",
                                shift.to(w.dtype), like=w)
            node = new_get_attr(program, b_name, linear)
            linear.args = (linear.args[0], linear.args[1], node)
            linear.kwargs = {k: v for k, v in linear.kwargs.items() if k != "bias"}
    if gamma is not None:
        program.set_tensor(target, (w64 * gamma.to(torch.float64)[None, :]).to(w.dtype))


@register_pass
@dataclass(frozen=True)
class FoldNorms(Pass):
    """Fold RMSNorm/LayerNorm weights and biases into the linears that read the norm."""

    name = "fold-norms"

    def apply(self, program: Program, ctx: PassContext) -> PassResult:
        require_canonical(program, self.name, "canonicalize,fold-norms")
        folded = kept = 0
        changed: set[fx.Node] = set()
        for norm in find_norms(program):
            linears, others = norm_consumers(norm)
            if others or not linears:
                uses = ", ".join(sorted({_describe(o) for o in others})) or "no linear"
                ctx.log(f"fold-norms: kept {norm.name}: its output also feeds {uses} "
                        "(post-norm residual), which no linear weight can absorb")
                kept += 1
                continue
            gamma = _param(program, norm.weight)
            if gamma is not None and norm.offset:  # Gemma: the scale is (1 + w)
                gamma = gamma.to(torch.float64) + norm.offset
            beta = _param(program, norm.bias)
            if (gamma is None or bool((gamma == 1).all())) and (
                    beta is None or not bool((beta != 0).any())):
                continue  # already folded
            for linear in linears:
                fold_into_linear(program, linear, gamma, beta)
                changed.add(linear)
            if gamma is not None:  # γ = offset + w becomes 1: w = 1 - offset (0 for Gemma)
                name = _private_norm_param(program, norm, norm.weight)
                w = program.get_tensor(name)
                program.set_tensor(name, torch.full_like(w, 1.0 - norm.offset))
            if beta is not None:
                name = _private_norm_param(program, norm, norm.bias)
                program.set_tensor(name, torch.zeros_like(beta))
            ctx.log(f"fold-norms: folded {norm.name} into {len(linears)} linear(s)", level=2)
            folded += 1
        if folded:
            program.recompile()
        stats = {"norms-folded": folded, "norms-kept": kept, "layers-changed": len(changed)}
        return PassResult(folded > 0, stats)


def _param(program: Program, node: fx.Node | None) -> torch.Tensor | None:
    return None if node is None else program.get_tensor(str(node.target)).detach()


def _describe(node: fx.Node) -> str:
    if node.op == "output":
        return "the program output"
    target = getattr(node.target, "__name__", str(node.target))
    return f"{target.split('.')[0]} (%{node.name})"

"""`quantize-act`: fake-quantize the input activation of every selected linear (W4A8's "A8").

    quantize-act{format=fp8-e4m3,granularity=token}
    lower-datatype{format=fp4},quantize-act{format=fp8-e4m3,pow2-scale=true}

Before each selected `aten.linear` (or `qc.linear_<format>`, when lower-datatype already ran) the
input x becomes `qc.quantize_act(x) {format, granularity, pow2_scale}`: x quantized to 8 bits and
dequantized, which is what a W4A8 kernel computes on. ZeroQuant-FP (arXiv 2307.09782) finds FP8
E4M3 activations better than INT8 for LLMs, hence the default; `pow2-scale` is its
power-of-two scale constraint (see qcompiler/act_ops.py for the rule).

Linears that read the same tensor (q/k/v, gate/up) share one quantize_act node: the kernel
quantizes the activation once, and the IR says so. A linear whose input is already a
quantize_act is left alone, so running the pass twice changes nothing. `skip` patterns (same
syntax as lower-datatype) keep layers' inputs in floating point; by default the LM head, whose
input is the final hidden state that sampling is most sensitive to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.fx as fx

from qcompiler.passes.lower_datatype import matches
from qcompiler.ir.meta import infer_node_meta
from qcompiler.pass_registry import register_pass
from qcompiler.passes_base import Pass, PassContext, PassResult
from qcompiler.program import Program


def layer_name(node: fx.Node) -> str | None:
    """The layer a linear node computes (`aten.linear` with a constant weight or `qc.linear_*`),
    or None for any other node."""
    from qcompiler.ops import is_quantized_linear

    if node.op != "call_function":
        return None
    if is_quantized_linear(node.target):
        return str(node.kwargs["layer"])
    if node.target == torch.ops.aten.linear.default:
        w = node.args[1]
        if isinstance(w, fx.Node) and w.op == "get_attr":
            return str(w.target).removesuffix(".weight")
    return None


def linear_layers(program: Program) -> list[tuple[fx.Node, str]]:
    """Every linear node with its layer name, in graph order."""
    out = []
    for node in program.graph.nodes:
        layer = layer_name(node)
        if layer is not None:
            out.append((node, layer))
    return out


@register_pass
@dataclass(frozen=True)
class QuantizeAct(Pass):
    """Fake-quantize the input activations of linears (fp8-e4m3 or int8, per token or tensor)."""

    name = "quantize-act"
    format: Literal["fp8-e4m3", "int8"] = "fp8-e4m3"
    granularity: Literal["token", "tensor"] = "token"
    pow2_scale: bool = False
    skip: tuple[str, ...] = ("lm_head",)

    def apply(self, program: Program, ctx: PassContext) -> PassResult:
        from qcompiler.act_ops import quantize_act

        graph = program.graph
        shared: dict[fx.Node, fx.Node] = {}
        changed = skipped = 0
        for node, layer in linear_layers(program):
            x = node.args[0]
            if any(matches(layer, p) for p in self.skip):
                skipped += 1
                continue
            if not isinstance(x, fx.Node) or x.target == quantize_act:
                continue
            q = shared.get(x)
            if q is None:
                with graph.inserting_after(x):
                    q = graph.create_node("call_function", quantize_act, (x,), {
                        "format": self.format, "granularity": self.granularity,
                        "pow2_scale": self.pow2_scale}, name=f"{x.name}_q")
                infer_node_meta(q)
                shared[x] = q
            node.replace_input_with(x, q)
            changed += 1
        if changed:
            program.recompile()
        ctx.log(f"{self.name}: {changed} linear input(s) quantized to {self.format}, "
                f"{skipped} skipped")
        return PassResult(changed > 0, {"layers-changed": changed, "layers-skipped": skipped})

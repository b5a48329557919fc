"""`quantize-report`: which layers a quantizing pipeline would touch, before it runs.

An analysis (it never changes the graph). It lists every linear layer with a constant weight
(the layers `lower-datatype` quantizes): its name (the weight's dotted name without `.weight`),
N×K, bias and dtype. The list goes to two places:
- `ctx.report["linears"]`: dicts, for the artifact's report and the Python API;
- `program.meta["quantize_report"]`: one line per layer, which the IR printer shows as a comment
  block at the top of the IR, so `qc-opt MODEL -p quantize-report` output (and FileCheck) sees
  `// linear model.layers.0.mlp.down_proj: N=128 K=256 bias=false dtype=f32`.
The lines describe the program as it was when the pass ran; a later pass does not update them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.fx as fx

from qcompiler.pass_registry import register_pass
from qcompiler.passes_base import Pass, PassContext, PassResult
from qcompiler.program import Program


def layer_name(weight_target: str) -> str:
    return weight_target.removesuffix(".weight")


def describe_linear(program: Program, node: fx.Node) -> dict[str, Any]:
    from qcompiler.ir.printer import DTYPES

    weight = node.args[1]
    tensor = program.get_tensor(str(weight.target))
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    n, k = tensor.shape
    return {
        "name": layer_name(str(weight.target)), "weight": str(weight.target), "node": node.name,
        "n": int(n), "k": int(k), "bias": bias is not None,
        "dtype": DTYPES.get(tensor.dtype, str(tensor.dtype).removeprefix("torch.")),
    }


@register_pass
@dataclass(frozen=True)
class QuantizeReport(Pass):
    """List the quantizable linear layers (name, N x K, bias, dtype) in the IR and the report."""

    name = "quantize-report"

    def apply(self, program: Program, ctx: PassContext) -> PassResult:
        linears = [describe_linear(program, node) for node in program.linears()]
        ctx.report["linears"] = linears
        weights = sum(entry["n"] * entry["k"] for entry in linears)
        lines = [f"quantize-report: {len(linears)} linear layers, {weights} weights"]
        lines += [
            f"linear {e['name']}: N={e['n']} K={e['k']} bias={str(e['bias']).lower()} "
            f"dtype={e['dtype']}"
            for e in linears
        ]
        program.meta["quantize_report"] = lines
        return PassResult(False, {"linears": len(linears)})

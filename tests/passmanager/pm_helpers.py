"""Shared by the pass-infrastructure tests: Programs from small modules, throwaway passes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

from qcompiler.errors import PassError
from qcompiler.passes_base import Pass, PassContext, PassResult
from qcompiler.program import Program


def export_program(module: torch.nn.Module, *inputs: torch.Tensor) -> Program:
    """torch.export (non-strict) -> unlifted GraphModule, normalized the way capture does."""
    module.eval()
    with torch.no_grad():
        ep = torch.export.export(module, inputs, strict=False)
    gm = ep.module()
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_module":  # the runtime guard module
            graph.erase_node(node)
    graph._codegen = fx.graph.CodeGen()
    out = next(n for n in graph.nodes if n.op == "output")
    result = out.args[0]
    if isinstance(result, (tuple, list)) and len(result) == 1:
        out.args = (result[0],)
    gm.recompile()
    names = tuple(n.name for n in graph.nodes if n.op == "placeholder")
    return Program(gm=gm, example_inputs=tuple(inputs), input_names=names, source="test")


class TwoLinears(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up = torch.nn.Linear(16, 32)
        self.down = torch.nn.Linear(32, 8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def two_linears() -> Program:
    return export_program(TwoLinears(), torch.randn(2, 16))


@dataclass(frozen=True)
class Touch(Pass):
    """Add a harmless relu after the output (changes the IR)."""

    name = "test-touch"

    def apply(self, program: Program, ctx: PassContext) -> PassResult:
        graph = program.graph
        out = next(n for n in graph.nodes if n.op == "output")
        with graph.inserting_before(out):
            relu = graph.call_function(torch.ops.aten.relu.default, (out.args[0],))
        out.args = (relu,)
        return PassResult(True, {"relus-added": 1})


@dataclass(frozen=True)
class Fail(Pass):
    """Always fail with a user error."""

    name = "test-fail"
    reason: str = "boom"

    def apply(self, program: Program, ctx: PassContext) -> PassResult:
        raise PassError(self.name, f"{self.reason}; use a smaller group size")


@dataclass(frozen=True)
class Crash(Pass):
    """Fail like a compiler bug."""

    name = "test-crash"

    def apply(self, program: Program, ctx: PassContext) -> PassResult:
        raise KeyError("missing-thing")


@dataclass(frozen=True)
class BreakGraph(Pass):
    """Point a get_attr at a tensor that does not exist (a verifier error)."""

    name = "test-break"

    def apply(self, program: Program, ctx: PassContext) -> PassResult:
        node = next(iter(program.graph.find_nodes(op="get_attr")))
        node.target = "no.such.tensor"
        return PassResult(True)

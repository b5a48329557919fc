"""dce removes dead nodes and their tensors; quantize-report lists linears in ctx and the IR."""

from __future__ import annotations

import torch
from pm_helpers import export_program, two_linears

from qcompiler.ir import print_program
from qcompiler.pass_manager import run_pipeline
from qcompiler.passes_base import PassContext
from qcompiler.pipeline import parse_pipeline


class Dead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.used = torch.nn.Linear(4, 4)
        self.unused = torch.nn.Linear(4, 4)
        self.register_buffer("table", torch.arange(4.0))

    def forward(self, x, mask):  # mask is an input nobody reads: it must stay
        _ = self.unused(x) * self.table  # dead, with the tensors only it uses
        return self.used(x)


def apply(spec: str, program, ctx=None):
    (p,) = parse_pipeline(spec)
    result = p.apply(program, ctx or PassContext())
    program.recompile()
    return result


def test_dce_removes_dead_nodes_and_their_tensors():
    program = export_program(Dead(), torch.randn(2, 4), torch.ones(2, 4))
    ref = program.run()
    graph = program.graph
    before = len(graph.nodes)
    result = apply("dce", program)
    assert result.modified
    assert result.stats["nodes-removed"] == before - len(graph.nodes) > 0
    assert sorted(program.tensors()) == ["used.bias", "used.weight"]
    assert result.stats["tensors-removed"] == 3
    assert [n.name for n in graph.nodes if n.op == "placeholder"] == ["x", "mask"]
    assert torch.equal(program.run(), ref)


def test_dce_keeps_side_effects_and_is_idempotent():
    program = two_linears()
    graph = program.graph
    x = next(n for n in graph.nodes if n.op == "placeholder")
    with graph.inserting_after(x):
        check = graph.call_function(torch.ops.aten.any.default, (x,))
    with graph.inserting_after(check):
        graph.call_function(torch.ops.aten._assert_async.msg, (check, "x"))
    assert not apply("dce", program).modified
    assert "aten._assert_async.msg" in {str(n.target) for n in graph.nodes}


def test_quantize_report_lists_every_linear():
    program = two_linears()
    ctx = PassContext()
    result = apply("quantize-report", program, ctx)
    assert not result.modified and result.stats == {"linears": 2}
    assert ctx.report["linears"] == [
        {"name": "up", "weight": "up.weight", "node": "linear", "n": 32, "k": 16, "bias": True,
         "dtype": "f32"},
        {"name": "down", "weight": "down.weight", "node": "linear_1", "n": 8, "k": 32,
         "bias": False, "dtype": "f32"},
    ]
    assert program.meta["quantize_report"] == [
        "quantize-report: 2 linear layers, 768 weights",
        "linear up: N=32 K=16 bias=true dtype=f32",
        "linear down: N=8 K=32 bias=false dtype=f32",
    ]


def test_quantize_report_shows_in_the_printed_ir():
    program = run_pipeline(two_linears(), "canonicalize,dce,quantize-report")
    text = print_program(program)
    assert "// linear down: N=8 K=32 bias=false dtype=f32\n" in text
    assert text.index("// linear up:") < text.index("qc.func @main")

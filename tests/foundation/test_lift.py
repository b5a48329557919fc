"""Program.export lifts the annotated graph instead of re-running torch.export (qcompiler/lift.py).

What must hold: the lifted ExportedProgram saves and loads like a traced one, the loaded program
computes exactly what the Program computes (same ops, so bit-equal) at the example length and at
other sequence lengths (the dynamic dimension survived), and a graph lifting cannot take falls
back to tracing. Also: lower-datatype's K padding keeps the sequence length symbolic (its fake
kernel used to pin it to the example's, for the whole graph).
"""

from __future__ import annotations

import pytest
import torch

from qcompiler.capture import load_exported, save_exported
from qcompiler.lift import lift
from qcompiler.pass_manager import PassManager
from qcompiler.passes_base import PassContext
from qcompiler.pipeline import parse_pipeline, resolve_pipeline
from qcompiler.program import Program
from qcompiler.zoo import load


@pytest.fixture(scope="module")
def quantized() -> Program:
    """stories260k lowered to razer4 with padded K, as bench/fixed_cost.py compiles it."""
    passes = parse_pipeline(resolve_pipeline(None, "razer4", 32, "pad"))
    return PassManager(passes).run(load("stories260k"), PassContext(quiet=True))


def _inputs(batch: int, length: int) -> tuple[torch.Tensor, ...]:
    return (torch.randint(0, 32, (batch, length), generator=torch.Generator().manual_seed(1)),)


def test_padding_keeps_the_sequence_length_symbolic(quantized):
    (ids,) = [n for n in quantized.graph.nodes if n.op == "placeholder"]
    assert all(isinstance(d, torch.SymInt) for d in ids.meta["val"].shape)
    assert any("constant_pad_nd" in str(n.target) for n in quantized.graph.nodes)


def test_export_lifts_without_tracing(quantized, monkeypatch, tmp_path):
    def no_trace(self):
        raise AssertionError("Program.export re-traced a liftable program")

    monkeypatch.setattr(Program, "reexport", no_trace)
    ep = quantized.export()
    ranges = {str(k): (int(v.lower), int(v.upper)) for k, v in ep.range_constraints.items()}
    assert sorted(ranges.values()) == sorted((d.min, d.max) for d in quantized.dynamic_dims)
    path = tmp_path / "program.pt2"
    save_exported(quantized, path)
    loaded = load_exported(path)
    batch, length = quantized.example_inputs[0].shape
    for shape in ((batch, length), (batch, 5), (1, 37), (3, 2)):
        x = _inputs(*shape)
        assert torch.equal(loaded(*x), quantized(*x)), shape


def test_a_graph_lifting_cannot_take_is_traced(quantized, monkeypatch):
    program = quantized.clone()
    node = next(n for n in program.graph.nodes if n.op == "call_function"
                and "val" in n.meta and n.users)
    del node.meta["val"]
    assert lift(program) is None
    traced = []
    real = Program.reexport
    monkeypatch.setattr(Program, "reexport", lambda self: traced.append(1) or real(self))
    ep = program.export()
    assert traced and ep.module()(*program.example_inputs).shape == program.run().shape

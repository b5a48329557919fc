"""Round trip of real programs: write_ir -> read_ir gives the same IR text (header comments
aside), the same outputs bit for bit, the same tensors, facts and weight plans; qc-opt reads and
writes .qcir files. One tiny zoo model keeps this fast; scripts in the issue ran every zoo model."""

from __future__ import annotations

import torch

from qcompiler import zoo
from qcompiler.cli import qc_opt
from qcompiler.ir import print_program
from qcompiler.ir.io import read_ir, write_ir
from qcompiler.pass_manager import run_pipeline

LOWER = "lower-datatype{format=razer4,group-size=64}"


def body(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("//")]


def first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def round_trip(program, path):
    write_ir(program, path)
    return read_ir(path)


def test_a_captured_model_round_trips(tmp_path):
    program = zoo.load("llama-tiny")
    parsed = round_trip(program, tmp_path / "a.qcir")
    assert body(print_program(parsed)) == body(print_program(program))
    assert (parsed.input_names, parsed.kind, parsed.source) == (
        program.input_names, program.kind, program.source)
    assert parsed.dynamic_dims == program.dynamic_dims and parsed.meta == program.meta
    for a, b in zip(parsed.example_inputs, program.example_inputs):
        assert torch.equal(a, b)
    assert torch.equal(first(parsed.run()), first(program.run()))
    # the batch and sequence stay symbolic: another shape runs through the parsed program
    ids = torch.randint(0, 512, (3, 5))
    assert torch.equal(first(parsed(ids)), first(program(ids)))
    # and a second trip prints the same text again, header comments included
    again = round_trip(parsed, tmp_path / "b.qcir")
    assert (tmp_path / "b.qcir").read_text().replace("b.safetensors", "a.safetensors") == (
        tmp_path / "a.qcir").read_text()
    assert body(print_program(again)) == body(print_program(program))


def test_a_lowered_model_round_trips_with_its_packed_weights(tmp_path):
    program = zoo.load("llama-tiny").clone()
    run_pipeline(program, LOWER)
    parsed = round_trip(program, tmp_path / "low.qcir")
    text = print_program(parsed)
    assert "qc.linear_razer4(" in text and body(text) == body(print_program(program))
    assert parsed.tensors().keys() == program.tensors().keys()
    for name, t in program.tensors().items():
        assert torch.equal(parsed.tensors()[name], t), name
    assert torch.equal(first(parsed.run()), first(program.run()))


def test_a_parsed_program_goes_on_through_passes_like_the_original(tmp_path):
    """Passes after parsing see the same graph, types and tensors: lowering the parsed program
    gives the IR and packed weights that lowering the original gives."""
    program = zoo.load("llama-tiny").clone()
    parsed = round_trip(program, tmp_path / "a.qcir")
    run_pipeline(program, LOWER)
    run_pipeline(parsed, LOWER)
    assert body(print_program(parsed)) == body(print_program(program))
    for name, t in program.tensors().items():
        assert torch.equal(parsed.tensors()[name], t), name


def test_qc_opt_reads_and_writes_qcir(tmp_path, capsys):
    a, b = tmp_path / "a.qcir", tmp_path / "b.qcir"
    assert qc_opt.main(["zoo:llama-tiny", "-o", str(a)]) == 0
    assert "tensors=a.safetensors" in a.read_text().splitlines()[0]
    assert (tmp_path / "a.safetensors").is_file()
    assert qc_opt.main([str(a), "-o", str(b)]) == 0
    assert body(b.read_text()) == body(a.read_text())
    assert qc_opt.main([str(b)]) == 0
    assert body(capsys.readouterr().out) == body(a.read_text())


def test_qc_opt_reports_a_parse_error_on_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.qcir"
    bad.write_text("qc.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {\n"
                   "  %y = aten.relu(%z) : tensor<4xf32>\n  qc.return %y : tensor<4xf32>\n}\n")
    assert qc_opt.main([str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {bad}:2:18: use of undefined value %z"]


def test_names_fx_renames_print_as_written():
    """fx will not name a node `pow` (a builtin), `class` (a keyword) or `0` (no identifier) and
    renames it; the printer still prints the name the text gave, so print(parse(text)) == text."""
    from qcompiler.ir.io import parse_program

    text = """qc.func @main(%input: tensor<4x8xf32>) -> tensor<4x8xf32> {
  %pow = aten.pow.Tensor_Scalar(%input, 2) : tensor<4x8xf32>
  %pow_1 = aten.relu(%pow) : tensor<4x8xf32>
  %class = aten.mean.dim(%pow_1, [-1], true) : tensor<4x1xf32>
  %0 = aten.add.Tensor(%pow, %class) : tensor<4x8xf32>
  qc.return %0 : tensor<4x8xf32>
}
"""
    program = parse_program(text)
    assert {n.name for n in program.gm.graph.nodes} >= {"pow_2", "class_1", "_0"}  # fx's names
    assert body(print_program(program)) == body(text)
    x = torch.randn(4, 8)
    y = x.pow(2)
    torch.testing.assert_close(program(x), y + y.relu().mean(-1, keepdim=True), rtol=0, atol=0)


def test_a_copied_ir_name_is_printed_once():
    """A pass that copies a renamed node's meta onto a second live node: the names stay
    distinct (the first node keeps the written name, the copy prints its fx name)."""
    from qcompiler.ir.io import parse_program

    program = parse_program("""qc.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
  %pow = aten.pow.Tensor_Scalar(%x, 2) : tensor<4xf32>
  qc.return %pow : tensor<4xf32>
}
""")
    graph = program.gm.graph
    pow_node = next(n for n in graph.nodes if n.op == "call_function")
    with graph.inserting_after(pow_node):
        copy = graph.call_function(torch.ops.aten.neg.default, (pow_node,))
    copy.meta.update(pow_node.meta)
    out = next(n for n in graph.nodes if n.op == "output")
    out.args = (copy,)
    lines = body(print_program(program))
    assert lines[1].startswith("  %pow = aten.pow.Tensor_Scalar(%x, 2)")
    assert lines[2] == f"  %{copy.name} = aten.neg(%pow) : tensor<4xf32>"
    assert lines[3] == f"  qc.return %{copy.name} : tensor<4xf32>"

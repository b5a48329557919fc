"""A .qcir file is data: parsing it, and running the program it describes, calls only tensor ops,
pure operators and math, never exec/open/attrgetter or ops that read files."""

from __future__ import annotations

import pytest

from qcompiler.errors import QCompilerError
from qcompiler.ir.build import resolve_op
from qcompiler.ir.io import parse_program


@pytest.mark.parametrize("name", ["py.exec", "py.eval", "py.open", "py.__import__",
                                  "py.getattr", "py.attrgetter", "py.methodcaller", "py.call",
                                  "aten.from_file", "profiler._record_function_enter",
                                  "c10d.allreduce_"])
def test_dangerous_callables_do_not_resolve(name):
    assert resolve_op(name) is None


@pytest.mark.parametrize("name", ["py.getitem", "py.add", "py.sqrt", "py.int",
                                  "aten.linear.default", "aten.add.Tensor"])
def test_ordinary_ops_resolve(name):
    assert resolve_op(name) is not None


def test_an_exec_call_in_a_qcir_is_a_parse_error(tmp_path):
    marker = tmp_path / "pwned"
    text = (
        "// qcompiler IR: source=<module> kind=module\n"
        "qc.func @main(%x: tensor<2xf32>) -> tensor<2xf32> {\n"
        f'  %e = py.exec("open({str(marker)!r}, \'w\')") : none\n'
        "  qc.return %x : tensor<2xf32>\n"
        "}\n")
    with pytest.raises(QCompilerError):
        parse_program(text, "evil.qcir")
    assert not marker.exists()


def test_dunder_parameter_paths_are_refused():
    text = (
        "// qcompiler IR: source=<module> kind=module\n"
        "qc.func @main(%x: tensor<2xf32>) -> tensor<2xf32> {\n"
        '  %w = qc.param "__class__.w" : tensor<2xf32> {value = 1.0}\n'
        "  %y = aten.add.Tensor(%x, %w) : tensor<2xf32>\n"
        "  qc.return %y : tensor<2xf32>\n"
        "}\n")
    with pytest.raises(QCompilerError, match="parameter name"):
        parse_program(text, "evil.qcir")

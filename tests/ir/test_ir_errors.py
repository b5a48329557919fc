"""Malformed IR gives one line, `FILE:LINE:COL: message`, that says what is wrong where."""

from __future__ import annotations

import pytest

from qcompiler.errors import QCompilerError
from qcompiler.ir.io import parse_program

HEAD = "qc.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {\n"
TAIL = "  qc.return %y : tensor<4xf32>\n}\n"


@pytest.mark.parametrize("body, expected", [
    ("  %y = aten.relu(%z) : tensor<4xf32>\n", "2:18: use of undefined value %z"),
    ("  %y = aten.nosuch(%x) : tensor<4xf32>\n", "2:8: unknown op 'aten.nosuch'"),
    ("  %y = aten.relu(%x) : tensor<8xf32>\n",
     "2:8: %y has type tensor<4xf32>, but the IR says tensor<8xf32>"),
    ("  %y = aten.relu(%x) tensor<4xf32>\n", "2:22: expected ':', found 'tensor<4xf32>'"),
    ("  %y = aten.relu(%x, bogus) : tensor<4xf32>\n", "2:22: unknown constant 'bogus'"),
    ("  %y = aten.relu(%x) : tensor<4xf32>\n  %y = aten.neg(%x) : tensor<4xf32>\n",
     "3:8: %y is defined twice"),
    ("  %y = aten.mm(%x, %x) : tensor<4xf32>\n", "2:8: aten.mm does not accept these operands"),
    ('  %w = qc.param "w" : tensor<4xf32>\n  %y = aten.relu(%x) : tensor<4xf32>\n',
     "2:8: no tensor 'w': give the tensors file in the header"),
    ('  %w = qc.param "w" : tensor<4xf32> {value = [1.0, 2.0]}\n'
     "  %y = aten.relu(%x) : tensor<4xf32>\n",
     "2:8: qc.param 'w': value has shape [2] but the type says [4]"),
    ("  %y = aten.relu(%x) : tensor<4xf32> $\n", "2:38: unexpected character '$'"),
])
def test_parse_errors_are_one_line_with_line_and_column(body, expected):
    with pytest.raises(QCompilerError) as e:
        parse_program(HEAD + body + TAIL, "t.qcir")
    message = str(e.value)
    assert "\n" not in message and message.startswith("t.qcir:" + expected), message


def test_a_missing_return_and_trailing_text_are_errors():
    with pytest.raises(QCompilerError, match=r"^t.qcir:3:1: @main has no qc.return$"):
        parse_program(HEAD + "  %y = aten.relu(%x) : tensor<4xf32>\n}\n", "t.qcir")
    with pytest.raises(QCompilerError, match=r"^t.qcir:5:1: unexpected 'qc.func' after"):
        parse_program(HEAD + "  %y = aten.relu(%x) : tensor<4xf32>\n" + TAIL + "qc.func",
                      "t.qcir")


def test_a_missing_tensors_file_says_where_it_looked(tmp_path):
    text = "// qcompiler IR: source=x kind=module tensors=gone.safetensors\n" + HEAD + (
        "  %y = aten.relu(%x) : tensor<4xf32>\n" + TAIL)
    with pytest.raises(QCompilerError, match="tensors file .*gone.safetensors not found"):
        parse_program(text, "t.qcir", tmp_path)


def test_inline_and_random_params_and_default_dims():
    text = ("qc.func @main(%x: tensor<?x4xf32>) -> tensor<?x2xf32> {\n"
            '  %w = qc.param "fc.weight" : tensor<2x4xf32> {random = 3}\n'
            '  %b = qc.param "fc.bias" : tensor<2xf32> {value = 0.5}\n'
            "  %y = aten.linear(%x, %w, %b) : tensor<?x2xf32>\n"
            "  qc.return %y : tensor<?x2xf32>\n}\n")
    a, b = parse_program(text), parse_program(text)
    assert a.get_tensor("fc.weight").equal(b.get_tensor("fc.weight"))  # seeded
    assert 0.0 < float(a.get_tensor("fc.weight").std()) < 0.1
    assert a.get_tensor("fc.bias").tolist() == [0.5, 0.5]
    (dim,) = a.dynamic_dims
    assert (dim.input_index, dim.dim, dim.name) == (0, 0, "x_0")
    assert a.example_inputs[0].shape[1] == 4


def test_check_syntax_catches_what_the_printer_cannot_express():
    """Reproducers check their IR before offering `qc-opt repro.qcir` as the replay command."""
    from qcompiler.ir.io import check_syntax

    check_syntax(HEAD + "  %y = aten.relu(%x) : tensor<4xf32>\n" + TAIL)
    with pytest.raises(QCompilerError, match=r"^<ir>:2:34: unexpected character '\.'"):
        check_syntax(HEAD + "  %y = aten.add.Tensor(%x, dense<...> : tensor<4xf32>) : "
                            "tensor<4xf32>\n" + TAIL)
    with pytest.raises(QCompilerError, match=r"^<ir>:2:8: unknown op 'py.my_helper'"):
        check_syntax(HEAD + "  %y = py.my_helper(%x) : tensor<4xf32>\n" + TAIL)

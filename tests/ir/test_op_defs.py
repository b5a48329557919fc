"""The `qc` op definitions (qcompiler/dialect/): registration, verifier, parser and docs use them.

The bug this guards against: a `qc.linear_int4` whose scales were [32, 1] instead of [32, 2]
verified clean and ran, silently reusing one scale for two groups.
"""

from __future__ import annotations

import pytest
import torch

from qcompiler import formats
from qcompiler.dialect import defs, doc, registry
from qcompiler.errors import QCompilerError, VerifyError
from qcompiler.ir.io import parse_program
from qcompiler.ir.printer import print_program
from qcompiler.verifier import find_problems, verify

# The schemas torch.export archives and artifacts were written with: they must not change.
SCHEMAS = {
    "linear_razer4": "qc::linear_razer4(Tensor x, Tensor codes, Tensor scales, Tensor? zeros, "
                     "Tensor? meta, Tensor? global_scale, Tensor? bias, *, int group_size, int n, "
                     "int k, str layer, str opts=\"\") -> Tensor",
    "quantize_act": "qc::quantize_act(Tensor x, *, str format, str granularity=\"token\", "
                    "bool pow2_scale=False) -> Tensor",
    "quantize_kv": "qc::quantize_kv(Tensor x, *, str format, int group_size, str layer=\"\") "
                   "-> Tensor",
    "hadamard": "qc::hadamard(Tensor x) -> Tensor",
}

INT4 = """qc.func @main(%x: tensor<4x64xf32>) -> tensor<4x32xf32> {
  %c = qc.param "fc.codes" : tensor<32x32xui8> {random = 0}
  %s = qc.param "fc.scales" : tensor<32x2xf16> {value = 0.1}
  %z = qc.param "fc.zeros" : tensor<32x2xui8> {value = 8}
  %y = qc.linear_int4(%x, %c, %s, %z, none, none, none) ATTRS : tensor<4x32xf32>
  qc.return %y : tensor<4x32xf32>
}
""".replace("ATTRS", '{group_size = 32, n = 32, k = 64, layer = "fc"}')


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_registered_schemas_are_unchanged(name):
    assert str(registry.overload(name)._schema) == SCHEMAS[name]


def test_scales_of_the_wrong_shape_fail_verification():
    program = parse_program(INT4, "int4.qcir")
    verify(program)  # the well-formed program is clean
    program.set_tensor("fc.scales", torch.full((32, 1), 0.1, dtype=torch.float16))
    with pytest.raises(VerifyError, match=r"%y \(qc.linear_int4\) operand scales has shape "
                                          r"\[32, 1\], expected \[n, k/group_size\] = \[32, 2\]"):
        verify(program)


def test_the_parser_rejects_it_with_a_position():
    bad = INT4.replace("tensor<32x2xf16>", "tensor<32x1xf16>")
    with pytest.raises(QCompilerError, match=r"^bad.qcir:5:8: qc.linear_int4 operand scales has "
                                             r"shape \[32, 1\], expected \[n, k/group_size\] = "
                                             r"\[32, 2\]$"):
        parse_program(bad, "bad.qcir")


@pytest.mark.parametrize("fmt", defs.weight_formats())
def test_every_format_satisfies_its_linear_definition(fmt):
    """What each format's quantizer produces is exactly what the definition accepts, and one
    group fewer in the scales is rejected."""
    q = formats.get(fmt).quantize(torch.randn(32, 256), search="rtn")
    parts = [q.tensors().get(p) for p in ("codes", "scales", "zeros", "meta", "global_scale")]
    attrs = {"group_size": q.group_size, "n": 32, "k": 256, "layer": "fc"}
    d = defs.linear_def(fmt)
    assert registry.check_call(d, (torch.randn(2, 256), *parts, None), attrs) == []
    parts[1] = parts[1][:, :-1] if parts[1].shape[1] > 1 else parts[1][:-1]
    (problem,) = registry.check_call(d, (torch.randn(2, 256), *parts, None), attrs)
    assert problem.startswith("operand scales has shape")


@pytest.mark.parametrize("op, args, kwargs, problem", [
    ("linear_int4", (torch.randn(2, 64), torch.zeros(32, 32, dtype=torch.uint8),
                     torch.ones(32, 2, dtype=torch.float16), None, None, None, None),
     {"group_size": 32, "n": 32, "k": 64, "layer": "fc"}, "is missing operand zeros"),
    ("linear_int4_sym", (torch.randn(2, 64), torch.zeros(32, 16, dtype=torch.uint8),
                         torch.ones(32, 2, dtype=torch.float16), None, None, None, None),
     {"group_size": 32, "n": 32, "k": 64, "layer": "fc"},
     "operand codes has shape [32, 16], expected [n, k*bits/8] = [32, 32]"),
    ("linear_int4_sym", (torch.randn(2, 64), torch.zeros(32, 32, dtype=torch.uint8),
                         torch.ones(32, 2, dtype=torch.float32), None, None, None, None),
     {"group_size": 32, "n": 32, "k": 64, "layer": "fc"},
     "operand scales has element type f32, expected f16"),
    ("linear_int4_sym", (torch.randn(2, 48), torch.zeros(32, 32, dtype=torch.uint8),
                         torch.ones(32, 2, dtype=torch.float16), None, None, None, None),
     {"group_size": 32, "n": 32, "k": 64, "layer": "fc"},
     "operand x has shape [2, 48], expected [..., k] = [..., 64]"),
    ("quantize_kv", (torch.randn(1, 2, 3, 48),), {"format": "int4", "group_size": 32},
     "violates d % group_size == 0 (d=48, group_size=32)"),
    ("quantize_act", (torch.randn(2, 8),), {"format": "nf4"},
     "has format='nf4', expected one of fp8-e4m3, int8"),
    ("hadamard", (torch.randn(2, 6),), {}, "violates has_hadamard(d) (d=6)"),
])
def test_each_op_constraint_is_checked(op, args, kwargs, problem):
    assert registry.check_call(defs.definition(op), args, kwargs) == [problem]


def test_printer_orders_qc_attributes_by_the_definition():
    shuffled = INT4.replace('{group_size = 32, n = 32, k = 64, layer = "fc"}',
                            '{layer = "fc", k = 64, group_size = 32, n = 32}')
    program = parse_program(shuffled, "t.qcir")
    assert find_problems(program) == []
    assert '{group_size = 32, n = 32, k = 64, layer = "fc"}' in print_program(program)


def test_the_documented_op_table_is_the_generated_one():
    text = doc.CONTRACTS.read_text()
    assert doc.op_table() in text, \
        "docs/CONTRACTS.md is stale: run python -m qcompiler.dialect.doc --write"

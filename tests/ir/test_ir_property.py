"""Property: print(parse(text)) is a fixed point, and the parsed program computes what the text
says, for random small hand-written graphs (inline and seeded-random params, a dynamic batch,
tuples through py.getitem, scalar and list operands, string attributes with escapes, value
names that fx would rename: Python builtins and keywords, names that are no identifier)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.ir import print_program
from qcompiler.ir.io import parse_program, read_ir, write_ir
from qcompiler.ir.parser import Parser
from qcompiler.ir.printer import DTYPES, attr_str

# (template, result width given input width 8 or 1); {a} is the last value, {b} an earlier one.
UNARY = ["aten.relu({a})", "aten.tanh({a})", "aten.neg({a})", "aten.mul.Tensor({a}, {s})",
         "aten.add.Tensor({a}, {s})"]
BINARY = ["aten.add.Tensor({a}, {b})", "aten.mul.Tensor({a}, {b})", "aten.sub.Tensor({a}, {b})"]
# Value names fx cannot use as node names (it would print `%pow_1`, `%_3`); index i is the
# i-th value's, so the names in one program stay distinct.
FX_RENAMED = ["pow", "sum", "input", "class", "max", "id", "type", "lambda"]


def body(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("//")]


@st.composite
def programs(draw) -> str:
    """IR text: x[?, 8] through a random chain of ops that keep the [?, 8] shape."""
    lines = ["// dims: x.0=batch:2..64",
             "qc.func @main(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {"]
    seed = draw(st.integers(0, 2**31 - 1))
    lines.append(f'  %w = qc.param "fc.weight" : tensor<8x8xf32> {{random = {seed}}}')
    bias = draw(st.lists(st.floats(-4, 4, width=32), min_size=8, max_size=8))
    lines.append(f'  %b = qc.param "fc.bias" : tensor<8xf32> {{value = {bias!r}}}')
    values = ["x"]
    for i in range(draw(st.integers(1, 8))):
        a, b = f"%{values[-1]}", f"%{draw(st.sampled_from(values))}"
        kind = draw(st.sampled_from(["unary", "binary", "linear", "split", "sum"]))
        name = draw(st.sampled_from([f"v{i}", FX_RENAMED[i], f"{i}", f"a.{i}", f"v-{i}"]))
        if kind == "unary":
            s = draw(st.sampled_from(["2", "-1", "0.5", "1e-06", "inf"]))
            op = draw(st.sampled_from(UNARY)).format(a=a, s=s)
        elif kind == "binary":
            op = draw(st.sampled_from(BINARY)).format(a=a, b=b)
        elif kind == "linear":
            op = f"aten.linear({a}, %w, %b)"
        elif kind == "sum":
            lines.append(f"  %{name}_s = aten.sum.dim_IntList({a}, [-1], true) : tensor<?x1xf32>")
            op = f"aten.mul.Tensor({a}, %{name}_s)"
        else:
            lines.append(f"  %{name}_t = aten.split.Tensor({a}, 4, -1) : "
                         "(tensor<?x4xf32>, tensor<?x4xf32>)")
            lines.append(f"  %{name}_0 = py.getitem(%{name}_t, 1) : tensor<?x4xf32>")
            lines.append(f"  %{name}_1 = py.getitem(%{name}_t, 0) : tensor<?x4xf32>")
            op = f"aten.cat([%{name}_0, %{name}_1], -1)"
        lines.append(f"  %{name} = {op} : tensor<?x8xf32>")
        values.append(name)
    label = draw(st.text(alphabet='ab "\\é{}%', max_size=6))
    lines.append(f"  %out = aten.clone(%{values[-1]}) {{memory_format = #torch.contiguous_format}}"
                 " : tensor<?x8xf32>")
    lines.append(f"  %tag = aten.alias(%out) : tensor<?x8xf32>  // {json.dumps(label)}")
    lines.append("  qc.return %tag : tensor<?x8xf32>")
    lines.append("}")
    return "\n".join(lines) + "\n"


@settings(max_examples=25, deadline=None)
@given(programs(), st.integers(2, 9))
def test_print_parse_print_is_identity(text, batch):
    first = parse_program(text)
    printed = print_program(first)
    with tempfile.TemporaryDirectory() as tmp:  # the inline values go to the tensors file
        write_ir(first, Path(tmp) / "a.qcir")
        second = read_ir(Path(tmp) / "a.qcir")
    assert body(print_program(second)) == body(printed)
    assert body(printed) == [line.split("  //")[0].split(" {random")[0].split(" {value")[0]
                             for line in body(text)]
    x = torch.randn(batch, 8, generator=torch.Generator().manual_seed(batch))
    # the same weights and the same ops: bit-identical results at any batch size
    torch.testing.assert_close(first(x), second(x), rtol=0, atol=0, equal_nan=True)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=12), st.floats(allow_nan=False), st.integers(-2**63, 2**63 - 1),
                 st.booleans(), st.none(), st.sampled_from(list(DTYPES))))
def test_constants_print_and_parse_back(value):
    """Every constant the printer writes (escaped strings included) reads back as itself."""
    text = attr_str([value, value])
    assert Parser(text).parse_operand() == [value, value]

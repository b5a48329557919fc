"""The verifier: each structural rule has a program that breaks it."""

from __future__ import annotations

import pytest
import torch
from pm_helpers import two_linears

from qcompiler import verifier
from qcompiler.errors import VerifyError
from qcompiler.verifier import find_problems, verify


def test_a_captured_program_verifies():
    verify(two_linears())


def test_missing_tensor():
    p = two_linears()
    p.delete_tensor("up.weight")
    with pytest.raises(VerifyError) as e:
        verify(p, after="my-pass")
    assert str(e.value) == (
        "verify failed after my-pass: %up_weight refers to missing tensor 'up.weight'")


def test_get_attr_must_be_a_tensor():
    p = two_linears()
    p.gm.up.weight_scale = 3.0  # a plain attribute, not a tensor
    node = next(iter(p.graph.find_nodes(op="get_attr")))
    node.target = "up.weight_scale"
    assert find_problems(p) == [f"%{node.name} refers to 'up.weight_scale', a float, not a tensor"]


def test_placeholders_match_inputs():
    p = two_linears()
    p.input_names = ("x", "mask")
    with pytest.raises(VerifyError, match=r"^verify failed on the input program: 1 placeholders "
                                          r"for 2 input names and 1 example inputs$"):
        verify(p)


def test_output_must_exist_and_be_last():
    p = two_linears()
    out = next(n for n in p.graph.nodes if n.op == "output")
    p.graph.erase_node(out)
    assert find_problems(p) == ["expected one output node, found 0"]


def test_use_before_definition_fails_lint():
    p = two_linears()
    relu = next(n for n in p.graph.nodes if n.target == torch.ops.aten.relu.default)
    first = next(n for n in p.graph.nodes if n.op == "placeholder")
    first.prepend(relu)  # now relu uses a value defined after it
    (problem,) = find_problems(p)
    assert problem.startswith("graph lint: ")


@pytest.fixture(scope="module")
def scale_op():
    """A stand-in for a quantized op, in a test namespace so it cannot clash with qc::."""

    @torch.library.custom_op("qc_pm_test::scale", mutates_args=())
    def scale(x: torch.Tensor, format: str, group_size: int, eps: float = 0.0) -> torch.Tensor:
        return x * 2

    @scale.register_fake
    def _(x, format, group_size, eps=0.0):
        return torch.empty_like(x)

    return torch.ops.qc_pm_test.scale.default


def _program_with(op, args, kwargs, monkeypatch):
    monkeypatch.setattr(verifier, "QC_NAMESPACES", ("qc", "qc_pm_test"))
    monkeypatch.setattr("qcompiler.named_pipelines.format_names", lambda: ["razer4", "int4"])
    p = two_linears()
    out = next(n for n in p.graph.nodes if n.op == "output")
    with p.graph.inserting_before(out):
        node = p.graph.call_function(op, (out.args[0], *args), kwargs)
    out.args = (node,)
    return p, node


def test_qc_op_with_all_attributes_verifies(scale_op, monkeypatch):
    p, _ = _program_with(scale_op, ("razer4",), {"group_size": 32}, monkeypatch)
    verify(p)


@pytest.mark.parametrize("args, kwargs, problem", [
    ((), {"group_size": 32}, "is missing attribute 'format'"),
    (("razer4",), {}, "is missing attribute 'group_size'"),
    (("razer4",), {"group_size": 0}, "has group_size=0, expected > 0"),
    (("razer9",), {"group_size": 32}, "has unknown format 'razer9'"),
    (("razer4",), {"group_size": 32, "zero": 1}, "has unknown attribute 'zero'"),
])
def test_qc_op_attributes(scale_op, monkeypatch, args, kwargs, problem):
    p, node = _program_with(scale_op, args, kwargs, monkeypatch)
    assert find_problems(p) == [f"%{node.name} (qc_pm_test.scale) {problem}"]

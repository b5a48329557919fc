"""canonicalize: matmul spellings with constant weights become aten.linear; no-ops go."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from pm_helpers import export_program

from qcompiler.pass_manager import run_pipeline
from qcompiler.passes_base import PassContext
from qcompiler.pipeline import parse_pipeline

aten = torch.ops.aten
N, K = 8, 16


def ops(program) -> Counter:
    return Counter(str(n.target) for n in program.graph.nodes if n.op == "call_function")


def canonicalize(program):
    (p,) = parse_pipeline("canonicalize")
    ref = program.run()
    result = p.apply(program, PassContext())
    program.recompile()
    assert torch.allclose(program.run(), ref, rtol=0, atol=1e-12)  # float64: exact up to rounding
    return result


class Weights(torch.nn.Module):
    def __init__(self, forward):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(N, K, generator=g, dtype=torch.float64))
        self.kn = torch.nn.Parameter(torch.randn(K, N, generator=g, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(N, generator=g, dtype=torch.float64))
        self.fn = forward

    def forward(self, x):
        return self.fn(self, x)


CASES = {
    "matmul-t": lambda m, x: x @ m.w.t(),
    "matmul-T": lambda m, x: x @ m.w.T,
    "matmul-permute": lambda m, x: torch.matmul(x, m.w.permute(1, 0)),
    "matmul-transpose": lambda m, x: torch.matmul(x, m.w.transpose(-1, -2)),
    "matmul-kn": lambda m, x: x @ m.kn,
    "mm-t": lambda m, x: torch.mm(x.reshape(-1, K), m.w.t()),
    "mm-kn": lambda m, x: torch.mm(x.reshape(-1, K), m.kn),
    "addmm-t": lambda m, x: torch.addmm(m.b, x.reshape(-1, K), m.w.t()),
    "addmm-kn": lambda m, x: torch.addmm(m.b, x.reshape(-1, K), m.kn),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matmul_with_constant_weight_becomes_linear(case):
    program = export_program(Weights(CASES[case]), torch.randn(2, 3, K, dtype=torch.float64))
    result = canonicalize(program)
    counts = ops(program)
    assert counts["aten.linear.default"] == 1, counts
    assert not {"aten.mm.default", "aten.matmul.default", "aten.addmm.default",
                "aten.t.default", "aten.permute.default"} & set(counts)
    assert result.modified and result.stats["linears-created"] == 1
    (linear,) = program.linears()
    assert tuple(program.get_tensor(linear.args[1].target).shape) == (N, K)
    assert (len(linear.args) == 3) == case.startswith("addmm")


def test_kn_weight_is_transposed_in_place_and_keeps_its_name():
    program = export_program(Weights(CASES["matmul-kn"]), torch.randn(3, K, dtype=torch.float64))
    canonicalize(program)
    assert sorted(program.tensors()) == ["kn"]
    assert isinstance(program.gm.kn, torch.nn.Parameter) and program.gm.kn.shape == (N, K)


def test_shared_kn_weight_gets_a_transposed_copy():
    program = export_program(
        Weights(lambda m, x: x @ m.kn + m.kn.sum()), torch.randn(3, K, dtype=torch.float64))
    canonicalize(program)
    assert sorted(program.tensors()) == ["kn", "kn_t"]
    assert program.get_tensor("kn_t").shape == (N, K)


def test_non_constant_rhs_is_left_alone():
    program = export_program(Weights(lambda m, x: x @ x.transpose(-1, -2)),
                             torch.randn(3, K, dtype=torch.float64))
    result = canonicalize(program)
    assert ops(program)["aten.matmul.default"] == 1 and result.stats["linears-created"] == 0


def test_addmm_with_scaling_is_left_alone():
    program = export_program(Weights(lambda m, x: torch.addmm(m.b, x, m.kn, beta=0.5)),
                             torch.randn(3, K, dtype=torch.float64))
    canonicalize(program)
    assert ops(program)["aten.addmm.default"] == 1


class NoOps(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(K, N)
        self.drop = torch.nn.Dropout(0.1)

    def forward(self, x):
        y = self.lin(x).clone().contiguous().to(torch.float32)
        y = self.drop(y).view(y.shape).reshape(2, 3, N)
        return y.to(torch.float16).float() + torch.nn.functional.dropout(y, 0.2, training=False)


def test_no_ops_are_removed():
    program = export_program(NoOps(), torch.randn(2, 3, K))
    before = ops(program)
    result = canonicalize(program)
    after = ops(program)
    for gone in ("aten.clone.default", "aten.dropout.default", "aten.view.default",
                 "aten.reshape.default", "aten._assert_tensor_metadata.default"):
        assert gone not in after, gone
    # the round trip through float16 changes values: those casts stay
    assert after["aten.to.dtype"] == 2 and before["aten.to.dtype"] == 3
    assert result.stats["no-ops-removed"] == sum(before.values()) - sum(after.values())


def test_captured_llama_is_unchanged_numerically():
    from qcompiler.zoo import load

    program = load("llama-tiny")
    ref = program.run()
    linears = len(list(program.linears()))
    run_pipeline(program, "canonicalize,dce")
    assert len(list(program.linears())) == linears
    assert torch.equal(program.run(), ref)

"""awq: the fp function is kept (folded scales on llama-tiny, explicit muls on BERT), and with
activation outliers the quantized model's output error is below plain RTN's."""

from __future__ import annotations

import pytest
import torch

from qcompiler import zoo
from qcompiler.calibration import CalibrationConfig
from qcompiler.errors import PassError
from qcompiler.graph_norms import find_norms
from qcompiler.pass_manager import run_pipeline
from qcompiler.passes_base import PassContext
from qcompiler.pipeline import parse_pipeline

GEN = torch.Generator().manual_seed(0)
BATCHES = [torch.randint(3, 500, (1, 32), generator=GEN) for _ in range(4)]
IDS = torch.randint(3, 500, (1, 24), generator=GEN)
OUTLIERS = [5, 40, 77]


def ctx() -> PassContext:
    return PassContext(calibration=CalibrationConfig(batches=BATCHES))


def load(model: str):
    program = zoo.load(model)
    run_pipeline(program, "canonicalize")
    return program


def apply(program, spec: str):
    (p,) = parse_pipeline(spec)
    return p.apply(program, ctx())


def bert_with_outliers():
    """bert-tiny whose attention/FFN LayerNorms put 3 outlier channels (x30 in γ and β) into
    every q/k/v and intermediate input, the consuming columns /30: the same function on the
    linear path (the residual sees the outliers, as in a real BERT)."""
    program = load("bert-tiny")
    for name in list(program.tensors()):
        if name.endswith(("embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias",
                          "attention.output.LayerNorm.weight",
                          "attention.output.LayerNorm.bias")):
            t = program.get_tensor(name).clone()
            t[OUTLIERS] = t[OUTLIERS] * 30.0 + (0.5 if name.endswith("bias") else 0.0)
            program.set_tensor(name, t)
    return program


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("model, muls", [("llama-tiny", 0), ("bert-tiny", 8)])
def test_awq_keeps_the_fp_function(model, muls):
    program = load(model)
    ref = program(IDS)
    result = apply(program, "awq{format=razer4,group-size=32,grid=4}")
    assert rel(program(IDS), ref) < 1e-4
    stats = result.stats
    assert stats["groups-mul"] + stats["groups-folded"] == stats["groups-changed"]
    mul_nodes = [n for n in program.graph.nodes
                 if n.op == "call_function" and n.target == torch.ops.aten.mul.Tensor
                 and any(str(a).endswith("awq_inv_scale") for a in map(str, n.args))]
    assert len(mul_nodes) == stats["groups-mul"] <= muls
    if model == "llama-tiny":  # every group folds into a norm or a linear's rows
        assert stats["groups-mul"] == 0


def test_awq_beats_rtn_with_outliers():
    """razer4 g32 RTN everywhere, with and without awq first: awq's output error is lower."""
    lower = "lower-datatype{format=razer4,group-size=32,search=rtn},dce"
    ref_program = bert_with_outliers()
    ref = ref_program(IDS)
    rtn = bert_with_outliers()
    run_pipeline(rtn, lower, ctx=ctx())
    awq = bert_with_outliers()
    run_pipeline(awq, f"awq{{format=razer4,group-size=32,grid=10}},{lower}", ctx=ctx())
    err_rtn, err_awq = rel(rtn(IDS), ref), rel(awq(IDS), ref)
    assert err_awq < 0.8 * err_rtn, (err_awq, err_rtn)


def test_awq_must_run_before_planning_and_lowering():
    program = load("llama-tiny")
    run_pipeline(program, "lower-datatype{format=int4,search=rtn}", ctx=ctx())
    with pytest.raises(PassError, match="run awq before lower-datatype"):
        apply(program, "awq{format=int4}")


def test_awq_does_not_divide_gemma_offset_norm_weights():
    """Gemma's norms scale by (1 + w): dividing w by s would not divide the scale, so those
    groups take an explicit 1/s multiply and the function is kept (smooth's producer check)."""
    program = load("gemma-tiny")
    gen = torch.Generator().manual_seed(0)
    norms = {str(n.weight.target) for n in find_norms(program)}
    for name in norms:  # HF initializes w = 0; make the norms matter
        program.set_tensor(name, 0.5 * torch.randn(128, generator=gen))
    before = {name: program.get_tensor(name).clone() for name in norms}
    ref = program(IDS)
    result = apply(program, "awq{format=razer4,group-size=32,grid=4}")
    assert rel(program(IDS), ref) < 1e-4
    assert all(torch.equal(program.get_tensor(name), w) for name, w in before.items())
    assert result.stats["groups-mul"] >= 1

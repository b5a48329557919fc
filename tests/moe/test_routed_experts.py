"""Routed MoE experts at run time (qcompiler/routed_experts.py): the dense captured graph runs
every expert on every token; the runtime's CPU graphs run each expert on its routed tokens only,
with the same logits (1e-6 relative: only a matmul's rounding at another row count differs)."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx

import qcompiler
from qcompiler import routed_experts
from qcompiler.zoo import EXPERTS, LAYERS, TOP_K

MODELS = ["mixtral-tiny", "qwen3-moe-tiny"]
IDS = torch.tensor([[1, 7, 42, 99, 3, 250, 17, 8, 64, 300, 11, 5],
                    [4, 9, 200, 31, 77, 5, 6, 401, 12, 13, 90, 2]])


@pytest.fixture(scope="module", params=MODELS)
def artifact(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("routed") / request.param
    qcompiler.compile(f"zoo:{request.param}", format="razer4", out=out, quiet=True)
    return out


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-6) -> bool:
    return float((a - b).abs().max()) <= rtol * float(b.abs().max())


def test_each_expert_runs_on_its_routed_tokens_only(artifact, monkeypatch):
    model = qcompiler.load(artifact)
    rows = []
    real = routed_experts.routed_rows

    def counting(x, weight, chain, out_features):
        rows.append(int((weight != 0).sum()))
        return real(x, weight, chain, out_features)

    monkeypatch.setattr(routed_experts, "routed_rows", counting)  # before the rewrite binds it
    routed = routed_experts.routed_copy(model.gm)
    assert routed is not None and routed is not model.gm
    with torch.no_grad():
        dense, got = model.gm(IDS), routed(IDS)
    assert close(got, dense)
    # one call per expert and layer; together they see top-k of the E experts per token
    assert len(rows) == LAYERS * EXPERTS
    assert sum(rows) == LAYERS * IDS.numel() * TOP_K
    # the stored graph stays dense (it is what the artifact holds and CUDA graphs replay)
    assert not any(n.target is counting for n in model.gm.graph.nodes)


def test_forward_and_cpu_generation_use_the_routed_graph(artifact, monkeypatch):
    model = qcompiler.load(artifact)
    eager = model._eager_graph()
    assert eager is not model.gm
    assert sum(n.target is routed_experts.routed_rows for n in eager.graph.nodes) == \
        LAYERS * EXPERTS
    decoder = model.decoder()
    assert decoder is not None  # the probe check passed against the dense program
    assert any(n.target is routed_experts.routed_rows for n in decoder.gm.graph.nodes)
    routed_tokens = model.generate(IDS[:1, :6], max_new_tokens=6)
    monkeypatch.setenv("QC_ROUTED_EXPERTS", "0")
    dense_model = qcompiler.load(artifact)
    assert not any(n.target is routed_experts.routed_rows
                   for n in dense_model._eager_graph().graph.nodes)
    assert not any(n.target is routed_experts.routed_rows
                   for n in dense_model.decoder().gm.graph.nodes)
    assert torch.equal(dense_model.generate(IDS[:1, :6], max_new_tokens=6), routed_tokens)


def test_an_expert_no_token_chose_gives_zeros():
    chain = fx.symbolic_trace(torch.nn.Linear(8, 5))
    x = torch.randn(6, 8)
    out = routed_experts.routed_rows(x, torch.zeros(6, 1), chain, 5)
    assert out.shape == (6, 5) and not out.any()
    weight = torch.tensor([[0.0], [0.5], [0.0], [0.0], [1.0], [0.0]])
    out = routed_experts.routed_rows(x, weight, chain, 5)
    assert torch.allclose(out, chain(x) * weight, atol=1e-6) and not out[weight[:, 0] == 0].any()


def test_chains_that_mix_rows_stay_dense(tmp_path):
    """Per-tensor activation quantization takes one scale over every row: running it on the
    routed rows alone would change the numbers, so those experts keep the dense form."""
    spec = ("canonicalize,dce,lower-datatype{format=int4},"
            "quantize-act{format=int8,granularity=tensor},dce")
    qcompiler.compile("zoo:mixtral-tiny", pipeline=spec, out=tmp_path / "a", quiet=True)
    model = qcompiler.load(tmp_path / "a")
    assert routed_experts.route_experts(fx.GraphModule(model.gm, model.gm.graph.__deepcopy__())) == 0
    per_token = spec.replace("granularity=tensor", "granularity=token")
    qcompiler.compile("zoo:mixtral-tiny", pipeline=per_token, out=tmp_path / "b", quiet=True)
    model = qcompiler.load(tmp_path / "b")
    routed = routed_experts.routed_copy(model.gm)
    assert routed is not None
    with torch.no_grad():
        assert close(routed(IDS), model.gm(IDS))


def test_dense_models_are_left_alone():
    from qcompiler import zoo

    program = zoo.load("llama-tiny")
    assert routed_experts.routed_copy(program.gm) is None


def test_the_decode_ir_shows_each_routed_expert_as_a_region(artifact, capsys):
    from qcompiler.cli.run_cmd import main as run_main

    assert run_main([str(artifact), "--print-decode-ir"]) == 0
    text = capsys.readouterr().out
    assert text.count(" = qc.region ") == LAYERS * EXPERTS
    assert text.count("    qc.yield %") == LAYERS * EXPERTS
    assert '(%x: tensor<?x' in text and "= py.routed_rows(" in text
    # the experts' weights are read inside their regions, not by the function around them
    assert not any(line.startswith("  %model_layers_0_mlp_experts_0_down_proj_codes = ")
                   for line in text.splitlines())

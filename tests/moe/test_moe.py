"""MoE models (Mixtral, Qwen3-MoE): experts are captured as per-expert linears and quantized.

Claims checked, on the tiny random-init zoo models (4 experts, top-2, 2 layers):
- the captured program computes what transformers computes with its own (grouped_mm) experts
  (max abs difference <= 1e-5 of the logits' scale), in plain aten ops: no transformers op, no
  3-D expert tensor left, one gate_up and one down linear per expert;
- `format=int4` quantizes every expert linear (the report says so), keeps only the routers and
  the LM head in fp, and the artifact loads back with `qcompiler.load` and reproduces the
  compiled program exactly; `qcompile eval` runs on it and its KL is small.
"""

from __future__ import annotations

import json

import pytest
import torch

import qcompiler
from qcompiler import zoo
from qcompiler.cli import eval_cmd
from qcompiler.zoo import EXPERTS, LAYERS

MODELS = ["mixtral-tiny", "qwen3-moe-tiny"]
IDS = torch.tensor([[1, 7, 42, 99, 3, 250, 17, 8, 64, 300, 11, 5],
                    [4, 9, 200, 31, 77, 5, 6, 401, 12, 13, 90, 2]])


@pytest.mark.parametrize("model", MODELS)
def test_capture_matches_transformers_in_plain_linears(model):
    program = zoo.load(model)
    with torch.no_grad():
        ref = zoo.build_module(model)(input_ids=IDS).logits
    out = program(IDS)
    assert float((out - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("transformers" in t or "grouped_mm" in t for t in targets), targets
    assert not [name for name, t in program.tensors().items() if t.dim() == 3]
    experts = [str(n.args[1].target) for n in program.linears() if ".experts." in
               str(n.args[1].target)]
    assert len(experts) == LAYERS * EXPERTS * 2
    assert "model.layers.1.mlp.experts.3.gate_up_proj.weight" in experts


@pytest.fixture(scope="module", params=MODELS)
def compiled(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("moe") / request.param
    result = qcompiler.compile(f"zoo:{request.param}", format="int4", out=out, quiet=True)
    return request.param, out, result


def test_experts_are_quantized_and_the_rest_is_reported(compiled):
    _, out, _ = compiled
    layers = json.loads((out / "report.json").read_text())["layers"]
    quantized = {e["name"] for e in layers if e["status"] == "quantized"}
    kept = {e["name"] for e in layers if e["status"] != "quantized"}
    assert {f"model.layers.{i}.mlp.experts.{e}.{p}" for i in range(LAYERS)
            for e in range(EXPERTS) for p in ("gate_up_proj", "down_proj")} <= quantized
    assert kept == {"lm_head", "model.layers.0.mlp.gate", "model.layers.1.mlp.gate"}
    assert all(e["format"] == "int4" for e in layers if e["status"] == "quantized")


def test_artifact_loads_runs_and_evaluates(compiled, tmp_path, capsys):
    model, out, result = compiled
    loaded = qcompiler.load(out)
    with torch.no_grad():
        want = result.program(IDS[:1])
        assert torch.equal(loaded.gm(IDS[:1]), want)  # the stored graph, exactly
        # forward() runs the experts on their routed tokens (qcompiler/routed_experts.py)
        got = loaded(IDS[:1])
        assert float((got - want).abs().max()) <= 1e-6 * float(want.abs().max())
    report = tmp_path / "eval.json"
    code = eval_cmd.main([str(out), "--reference", f"zoo:{model}", "--samples", "2",
                          "--seq-len", "12", "--json", str(report)])
    assert code == 0, capsys.readouterr().err
    numbers = json.loads(report.read_text())
    assert numbers["tokens"] == 24
    assert 0 < numbers["kl_mean"] < 0.05, numbers  # int4 g128 on a random-init model

"""Streamed MoE checkpoints: the experts are read from the per-expert tensors the Hub stores.

Mixtral checkpoints store `block_sparse_moe.experts.<e>.w1/w2/w3.weight` and Qwen-MoE ones
`mlp.experts.<e>.gate_proj/up_proj/down_proj.weight`, which transformers renames and fuses into
`mlp.experts.gate_up_proj [E, 2I, H]` / `down_proj [E, H, I]` when it loads
(qcompiler/checkpoint_keys.py). Claims checked on the tiny zoo MoE models saved with
`save_pretrained` (which writes those per-expert keys):
- a streamed compile quantizes every expert linear and writes the same bytes as the compile that
  loads the whole model (RTN, int4 g32), so each expert was read from the right tensors in the
  right gate/up order;
- a layer-wise calibrated compile (fold-norms, rotate, GPTQ on fp statistics) matches the
  whole-model one byte for byte (each expert's rotation is replayed on the tensors it reads);
- a checkpoint missing one expert's tensor fails with a one-line error naming the parameter.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import qcompiler
from qcompiler import zoo
from qcompiler.calibration import CalibrationConfig
from qcompiler.errors import QCompilerError
from qcompiler.lazy_tensors import read_source, source_shape

MODELS = ["mixtral-tiny", "qwen3-moe-tiny"]
RTN = "canonicalize,dce,lower-datatype{format=int4,group-size=32},dce"
GPTQ = ("canonicalize,dce,fold-norms,rotate,gptq{format=int4,group-size=32,search=rtn},"
        "lower-datatype{format=int4,group-size=32},dce")
IDS = torch.tensor([[1, 17, 250, 3, 99, 42, 7, 8, 300, 5, 64]])


@pytest.fixture(scope="module", params=MODELS)
def checkpoint(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    zoo.build_module(request.param).save_pretrained(root / "hf")
    return root / "hf"


def _same_artifacts(a, b) -> None:
    wa, wb = load_file(a / "weights.safetensors"), load_file(b / "weights.safetensors")
    assert set(wa) == set(wb)
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def test_streamed_experts_are_quantized_like_the_loaded_model(checkpoint, tmp_path):
    keys = load_file(next(checkpoint.glob("*.safetensors")))
    assert any(".experts.0." in k for k in keys)  # stored per expert, as on the Hub
    qcompiler.compile(checkpoint, pipeline=RTN, out=tmp_path / "whole", quiet=True,
                      stream=False)
    qcompiler.compile(checkpoint, pipeline=RTN, out=tmp_path / "streamed", quiet=True,
                      stream=True)
    assert json.loads((tmp_path / "streamed" / "build.json").read_text())["streamed"] is True
    _same_artifacts(tmp_path / "whole", tmp_path / "streamed")
    report = json.loads((tmp_path / "streamed" / "report.json").read_text())
    text = json.dumps(report)
    assert "experts.3.gate_up_proj" in text and "experts.3.down_proj" in text
    quantized = load_file(tmp_path / "streamed" / "weights.safetensors")
    assert sum(".experts." in k and k.endswith(".codes") for k in quantized) == 2 * 2 * 4
    assert torch.equal(qcompiler.load(tmp_path / "whole")(IDS),
                       qcompiler.load(tmp_path / "streamed")(IDS))


def test_layerwise_gptq_on_streamed_experts_matches_the_whole_model(checkpoint, tmp_path):
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(3, 512, (1, 16), generator=g) for _ in range(2)]
    qcompiler.compile(checkpoint, pipeline=GPTQ, out=tmp_path / "whole", quiet=True,
                      stream=False, calibration=CalibrationConfig(batches=batches))
    qcompiler.compile(checkpoint, pipeline=GPTQ, out=tmp_path / "layers", quiet=True,
                      layerwise=True, sequential=False,
                      calibration=CalibrationConfig(batches=batches))
    assert json.loads((tmp_path / "layers" / "build.json").read_text())["layerwise"]
    _same_artifacts(tmp_path / "whole", tmp_path / "layers")


def test_a_fused_entry_reads_rows_across_its_parts(tmp_path):
    a, b = torch.arange(12.).reshape(3, 4), 100 + torch.arange(8.).reshape(2, 4)
    save_file({"a": a, "b": b}, str(tmp_path / "s.safetensors"))
    shard = str(tmp_path / "s.safetensors")
    cat = ((shard, shard), ("a", "b"))
    assert source_shape(*cat) == (5, 4)
    assert torch.equal(read_source(*cat), torch.cat([a, b]))
    assert torch.equal(read_source(*cat, 2, 4), torch.cat([a, b])[2:4])
    stack = ((cat[0], cat[0]), (cat[1], cat[1]))
    assert source_shape(*stack) == (2, 5, 4)
    assert torch.equal(read_source(*stack, 1, 2), torch.cat([a, b])[None])


def test_a_missing_expert_is_a_one_line_error(checkpoint, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    shard = next(broken.glob("*.safetensors"))
    tensors = load_file(shard)
    gone = next(k for k in tensors if ".layers.1." in k and ".experts.2." in k)
    del tensors[gone]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    with pytest.raises(QCompilerError) as info:
        qcompiler.compile(broken, pipeline=RTN, out=tmp_path / "out", quiet=True, stream=True)
    message = str(info.value)
    assert "\n" not in message and "layers.1" in message and "expert" in message
    assert not (tmp_path / "out").exists()

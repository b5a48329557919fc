"""Unquantized tensors are stored in a 16-bit float exactly when that is lossless, and load
widens them back: the artifact of a bf16 checkpoint keeps its embedding at 2 bytes a weight."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import qcompiler
from qcompiler import zoo
from qcompiler.artifact_check import read_safetensors_header
from qcompiler.errors import QCompilerError
from qcompiler.storage_dtype import exactly_representable, storage_dtype

SPEC = "canonicalize,dce,lower-datatype{format=int4,search=rtn},dce"
EMBED = "model.embed_tokens.weight"


@pytest.fixture(scope="module")
def bf16_artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16")
    model = zoo.build_module("llama-tiny").to(torch.bfloat16)
    model.save_pretrained(root / "hf")
    result = qcompiler.compile(root / "hf", pipeline=SPEC, out=root / "out", stream=False,
                               quiet=True)
    return root, model, result


def test_exactness_is_bitwise():
    assert exactly_representable(torch.tensor([1.0, -0.0, float("inf"), 2.0 ** -133]),
                                 torch.bfloat16)
    assert not exactly_representable(torch.tensor([1.0 + 2.0 ** -10]), torch.bfloat16)
    assert exactly_representable(torch.tensor([1.0 + 2.0 ** -10]), torch.float16)
    assert not exactly_representable(torch.tensor([-0.0, 1e-30]), torch.float16)  # fp16 underflow
    assert storage_dtype(torch.randn(64)) == torch.float32  # random fp32: kept
    assert storage_dtype(torch.randn(64).to(torch.bfloat16).float()) == torch.bfloat16
    assert storage_dtype(torch.arange(8, dtype=torch.uint8)) == torch.uint8


def test_bf16_checkpoint_stores_embedding_as_bf16(bf16_artifact):
    root, model, result = bf16_artifact
    out = root / "out"
    header = read_safetensors_header(out / "weights.safetensors")
    table = json.loads((out / "manifest.json").read_text())["tensors"]
    assert header[EMBED]["dtype"] == "BF16"
    assert table[EMBED] == {"dtype": "BF16", "shape": header[EMBED]["shape"], "load_as": "F32"}
    vocab, hidden = model.model.embed_tokens.weight.shape
    start, end = header[EMBED]["data_offsets"]
    assert end - start == 2 * vocab * hidden


def test_loaded_model_is_bitwise_the_compiled_program(bf16_artifact):
    root, _, result = bf16_artifact
    loaded = qcompiler.load(root / "out")
    weight = loaded.program.get_tensor(EMBED)
    assert weight.dtype == torch.float32  # widened back to the program's dtype
    assert torch.equal(weight, result.program.get_tensor(EMBED))
    ids = torch.randint(0, weight.shape[0], (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids), result.program(ids))


def test_fp32_weights_that_need_fp32_stay_fp32(tmp_path):
    module = zoo.build_module("llama-tiny")  # random fp32 init: not representable in 16 bits
    result = qcompiler.compile(module, pipeline=SPEC, out=tmp_path / "out", quiet=True)
    header = read_safetensors_header(tmp_path / "out" / "weights.safetensors")
    assert header[EMBED]["dtype"] == "F32"
    table = json.loads((tmp_path / "out" / "manifest.json").read_text())["tensors"]
    assert "load_as" not in table[EMBED]
    assert result.program.get_tensor(EMBED).dtype == torch.float32


@pytest.mark.parametrize("load_as", ["F64", "BF16", "I64"])
def test_a_widening_that_is_not_exact_is_refused(bf16_artifact, tmp_path, load_as):
    root, _, _ = bf16_artifact
    art = tmp_path / "art"
    shutil.copytree(root / "out", art)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["tensors"][EMBED]["load_as"] = load_as
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(QCompilerError, match=f"tensor {EMBED}: manifest.json says"):
        qcompiler.load(art)

"""Layer-wise calibrated compiles of a streamed checkpoint (qcompiler/layerwise, docs/LAYERWISE.md).

One tiny Llama checkpoint with non-unit norms (so fold-norms really folds), compiled with
fold-norms, rotate and gptq: whole in memory, layer by layer on fp statistics, layer by layer in
sequential mode. The fp-statistics artifact must be byte-identical to the whole-model one: same
weight transforms (replayed, not re-derived), same activations, same Hessians, same GPTQ.
"""

from __future__ import annotations

import json

import pytest
import torch

import qcompiler
from qcompiler import zoo
from qcompiler.calibration import CalibrationConfig
from qcompiler.errors import QCompilerError
from qcompiler.layerwise import runner
from qcompiler.layerwise.lazy_weight import LazySource, record, replay, row_separable

SPEC = ("canonicalize,dce,fold-norms,rotate,gptq{format=int4,search=rtn},"
        "lower-datatype{format=int4},dce")
IDS = torch.tensor([[1, 17, 250, 3, 99, 42, 7, 8, 300, 5, 64]])


def _calibration() -> CalibrationConfig:
    g = torch.Generator().manual_seed(0)
    return CalibrationConfig(batches=[torch.randint(3, 512, (1, 24), generator=g)
                                      for _ in range(3)])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """{mode: artifact dir} for whole (API), fp statistics (CLI) and sequential (API).

    The layer-wise runs calibrate on their default without --calib: 3 seeded random-token
    sequences of 24 tokens; the whole-model run is given the same sequences explicitly."""
    from qcompiler.cli.qcompile import main
    from qcompiler.evaluate import random_sequences

    root = tmp_path_factory.mktemp("layerwise")
    model = zoo.build_module("llama-tiny")
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
    model.save_pretrained(root / "hf")
    same = CalibrationConfig(batches=[random_sequences(512, 1, 24, i)[0] for i in range(3)])
    qcompiler.compile(root / "hf", pipeline=SPEC, out=root / "whole", quiet=True,
                      calibration=same, stream=False)
    rc = main([str(root / "hf"), "-p", SPEC, "-o", str(root / "fp"), "--stream",
               "--calib-inputs", "fp", "--calib-samples", "3", "--calib-seqlen", "24", "-q"])
    assert rc == 0
    qcompiler.compile(root / "hf", pipeline=SPEC, out=root / "seq", quiet=True, layerwise=True,
                      calibration=CalibrationConfig(samples=3, seqlen=24))
    return {mode: root / mode for mode in ("whole", "fp", "seq")}


def test_fp_statistics_mode_is_byte_identical_to_the_whole_model(compiled):
    whole, fp = compiled["whole"], compiled["fp"]
    for name in ("weights.safetensors", "report.json"):
        assert (whole / name).read_bytes() == (fp / name).read_bytes(), name
    build = json.loads((fp / "build.json").read_text())
    assert build["streamed"] is True and build["layerwise"] == "fp-statistics"
    assert torch.equal(qcompiler.load(whole)(IDS), qcompiler.load(fp)(IDS))


def test_sequential_mode_calibrates_later_layers_on_quantized_inputs(compiled):
    from safetensors.torch import load_file

    fp = load_file(compiled["fp"] / "weights.safetensors")
    seq = load_file(compiled["seq"] / "weights.safetensors")
    assert set(fp) == set(seq)
    codes = [k for k in fp if k.endswith(".codes")]
    first = [k for k in codes if ".layers.0." in k]
    later = [k for k in codes if ".layers.1." in k]
    # layer 0 sees the same (fp) inputs in both modes; layer 1 the outputs of quantized layer 0
    assert first and all(torch.equal(fp[k], seq[k]) for k in first)
    assert any(not torch.equal(fp[k], seq[k]) for k in later)
    assert json.loads((compiled["seq"] / "build.json").read_text())["layerwise"] == "sequential"
    assert torch.isfinite(qcompiler.load(compiled["seq"])(IDS)).all()


def test_only_one_layer_of_weights_is_in_memory_at_a_time(tmp_path, monkeypatch):
    model = zoo.build_module("llama-tiny")
    model.save_pretrained(tmp_path / "hf")
    real_counts = []
    original = runner.segment_program

    def spy(program, seg):
        real = [n for n, t in program.tensors().items()
                if t.dim() == 2 and 0 not in t.stride() and t.numel() > 1 << 12]
        real_counts.append((seg.index, sorted(real)))
        return original(program, seg)

    monkeypatch.setattr(runner, "segment_program", spy)
    result = qcompiler.compile(tmp_path / "hf", pipeline=SPEC, quiet=True,
                               calibration=_calibration(), layerwise=True)
    assert [i for i, _ in real_counts] == [-1, 0, 1]  # prefix, two layers, no LM-head piece
    assert real_counts[0][1] == ["model.embed_tokens.weight"]
    for index, names in real_counts[1:]:
        assert names and all(f"layers.{index}." in n for n in names), names
    # what stays fp (embeddings, LM head) is still in the shards after the compile
    assert 0 in result.program.get_tensor("lm_head.weight").stride()


def test_recorded_transforms_replay_bitwise_and_by_row_blocks():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 32, generator=g)
    gamma = torch.rand(32, generator=g) + 0.5
    q, _ = torch.linalg.qr(torch.randn(32, 32, generator=g, dtype=torch.float64))
    eager = ((w.to(torch.float64) * gamma.to(torch.float64)[None, :]).to(torch.float32)
             .to(torch.float64) @ q).to(torch.float32)
    lazy = record(torch.zeros(()).expand(64, 32), ["shard", "key"])
    folded = (lazy.detach().to(torch.float64) * gamma.to(torch.float64)[None, :]).to(lazy.dtype)
    rotated = (folded.to(torch.float64) @ q).to(folded.dtype)
    assert rotated.shape == (64, 32) and rotated.dtype == torch.float32
    assert torch.equal(replay(rotated, lambda: w), eager)
    source = LazySource("shard", "key", rotated)
    assert source.by_rows and torch.equal(source.finish(w[:10]), eager[:10])
    writer = (q.T @ lazy.to(torch.float64)[:32]).to(torch.float32)  # Qᵀ W mixes rows
    assert not row_separable(writer)
    with pytest.raises(QCompilerError, match="has not loaded yet"):
        bool((lazy == 1).all())


@pytest.mark.parametrize("spec, message", [
    ("canonicalize,awq{format=int4},lower-datatype{format=int4}", "awq cannot run layer by layer"),
    ("canonicalize,gptq{format=int4},dce,clip{format=int4},lower-datatype{format=int4}",
     "move clip next to gptq"),
])
def test_unsupported_pipelines_say_how_to_fix_them(spec, message):
    from qcompiler.pipeline import parse_pipeline

    with pytest.raises(QCompilerError, match=message):
        runner.split_pipeline(parse_pipeline(spec))


def test_random_token_calibration_is_a_warning_that_names_calib(compiled, capsys):
    """Without --calib a layer-wise compile calibrates on random tokens (it cannot sample from
    the model): every calibrated pass's accuracy rests on that, so it is said by default."""
    from qcompiler.cli.qcompile import main

    hf = compiled["fp"].parent / "hf"
    out = compiled["fp"].parent / "warned"
    assert main([str(hf), "-p", SPEC, "-o", str(out), "--stream", "--calib-samples", "2",
                 "--calib-seqlen", "16"]) == 0
    assert ("warning: calibrating on 2 random-token sequences: a layer-wise compile cannot "
            "sample from the model; give --calib FILE") in capsys.readouterr().err

"""calibration_batches (deterministic, honours samples/seqlen/text/SLAC) and linear stats."""

from __future__ import annotations

import pytest
import torch

from qcompiler import zoo
from qcompiler.calibration import (CalibrationConfig, calibration_batches, collect_linear_stats,
                                   make_batches, _text_batches)
from qcompiler.errors import QCompilerError, UsageError
from qcompiler.passes_base import PassContext


def test_sampled_batches_deterministic_and_shaped():
    program = zoo.load("llama-tiny")
    a = make_batches(program, CalibrationConfig(samples=2, seqlen=6, seed=3))
    b = make_batches(program, CalibrationConfig(samples=2, seqlen=6, seed=3))
    c = make_batches(program, CalibrationConfig(samples=2, seqlen=6, seed=4))
    assert [t.shape for t in a] == [torch.Size([1, 6])] * 2
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert all(int(t.max()) < 512 for t in a)


def test_batches_cached_in_config():
    program = zoo.load("llama-tiny")
    ctx = PassContext(calibration=CalibrationConfig(samples=1, seqlen=4))
    first = calibration_batches(program, ctx)
    assert calibration_batches(program, ctx)[0] is first[0]  # the sampler ran once


def test_default_config_created_in_ctx():
    ctx = PassContext()
    batches = [torch.tensor([[1, 2, 3]])]
    ctx.calibration = CalibrationConfig(batches=batches)
    assert calibration_batches(zoo.load("llama-tiny"), ctx)[0] is batches[0]


class WordTokenizer:
    """Stands in for an HF tokenizer: one id per whitespace-separated word."""

    def __call__(self, text, return_tensors="pt", truncation=False, max_length=None):
        ids = [hash(w) % 100 + 3 for w in text.split()]
        if truncation and max_length:
            ids = ids[:max_length]
        return {"input_ids": torch.tensor([ids])}


def test_text_batches_honour_lengths():
    text = " ".join(f"w{i}" for i in range(100))
    out = _text_batches(text, WordTokenizer(), [10, 10, 10], "causal-lm")
    assert [t.shape[-1] for t in out] == [10, 10, 10]
    assert not torch.equal(out[0], out[1])  # consecutive chunks, not the same one
    short = _text_batches("a b c", WordTokenizer(), [10, 10], "causal-lm")
    assert [t.shape[-1] for t in short] == [3]  # as much text as there is


def test_text_without_tokenizer_is_one_line_error():
    program = zoo.load("stories260k")  # ships no tokenizer
    with pytest.raises(QCompilerError, match="needs the model's tokenizer"):
        make_batches(program, CalibrationConfig(text="hello world", samples=1, seqlen=4))


def test_slac_lengths_spread_up_to_target():
    assert CalibrationConfig(samples=4, seqlen=64).lengths() == [64] * 4
    assert CalibrationConfig(samples=4, seqlen=64, slac=True).lengths() == [16, 32, 48, 64]
    assert CalibrationConfig(samples=8, seqlen=64, slac=True).lengths()[0] == 16  # floor
    assert CalibrationConfig(samples=2, seqlen=8, slac=True).lengths() == [8, 8]


def test_bad_config_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="--calib-samples"):
        CalibrationConfig(samples=0)
    with pytest.raises(QCompilerError, match="does not exist"):
        CalibrationConfig.from_file(tmp_path / "missing.txt")


def test_module_batches_follow_example_inputs(mixed_program):
    batches = make_batches(mixed_program, CalibrationConfig(samples=3, seqlen=20, slac=True))
    assert [tuple(b.shape) for b in batches] == [(1, 16, 32), (1, 16, 32), (1, 20, 32)]
    assert batches[0].dtype == torch.float32


def test_stats_equal_direct_computation(mixed_program):
    module_mix = mixed_program.get_tensor("mix.weight")
    batches = [torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(i))
               for i in range(3)]
    stats = collect_linear_stats(mixed_program, batches, ["proj"], hessian=True, max_samples=20)
    x = torch.cat([b[0] @ module_mix.T for b in batches])  # the input of proj, by hand
    st = stats["proj"]
    assert st.tokens == 48
    torch.testing.assert_close(st.absmax, x.abs().amax(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(st.hessian, x.T @ x, rtol=1e-4, atol=1e-3)
    assert st.samples.shape == (20, 128)
    # every sampled row is one of the real input rows
    d = (st.samples[:, None, :] - x[None]).abs().amax(-1).min(1).values
    assert float(d.max()) < 1e-5
    again = collect_linear_stats(mixed_program, batches, ["proj"], max_samples=20)
    assert torch.equal(again["proj"].samples, st.samples)  # seeded


def test_shared_hessian_and_chunking():
    program = zoo.load("llama-tiny")
    batches = [torch.tensor([[1, 5, 9, 33, 70, 2, 11, 400]])]
    layers = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
              "model.layers.0.mlp.down_proj", "model.layers.1.mlp.up_proj"]
    whole = collect_linear_stats(program, batches, layers, hessian=True)
    q, k = whole[layers[0]], whole[layers[1]]
    assert q.hessian is k.hessian  # q/k read the same node: one Hessian
    chunked = collect_linear_stats(program, batches, layers, hessian=True,
                                   budget_bytes=4 * 128 * 128)
    for name in layers:
        torch.testing.assert_close(chunked[name].hessian, whole[name].hessian)
    assert whole[layers[2]].hessian.shape == (256, 256)
    with pytest.raises(QCompilerError, match="no linear layer named"):
        collect_linear_stats(program, batches, ["model.nope"])

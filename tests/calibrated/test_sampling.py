"""Sampling from causal LMs: the KV-cache fast path samples from exactly the program's
distribution, and programs that no longer match their HF config take the plain loop."""

from __future__ import annotations

import pytest
import torch

from qcompiler import sampling, zoo
from qcompiler.capture import capture_module
from qcompiler.pass_manager import run_pipeline
from qcompiler.passes_base import PassContext


def _bos(program):
    return program.meta["config"].get("bos_token_id")


def _vocab(program):
    return int(program.meta["config"]["vocab_size"])


def _assert_program_logits(program, ids, used):
    """The logits each draw used are the program's on the whole sequence (1e-4 relative)."""
    want = program(ids)[0, :-1].float()
    scale = float(want.abs().max())
    assert used.shape == want.shape
    assert torch.allclose(used, want, rtol=1e-4, atol=1e-4 * scale), (used - want).abs().max()


@pytest.mark.parametrize("name", ["llama-tiny", "stories260k"])
def test_fast_path_samples_from_the_programs_distribution(name):
    program = zoo.load(name)
    assert sampling.fast_sampler(program) is not None
    ids, used = sampling.sample_with_logits(program, _vocab(program), 24, 5, _bos(program))
    assert ids.shape == (1, 24) and ids.dtype == torch.long
    assert int(ids[0, 0]) == _bos(program)
    _assert_program_logits(program, ids, used)


def test_same_seed_same_sequence_other_seed_other_sequence():
    program = zoo.load("llama-tiny")
    a = sampling.sample_sequence(program, 512, 24, 3, 1)
    b = sampling.sample_sequence(program, 512, 24, 3, 1)
    c = sampling.sample_sequence(program, 512, 24, 4, 1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_without_bos_the_first_token_is_seeded():
    program = zoo.load("llama-tiny")
    a = sampling.sample_sequence(program, 512, 8, 3)
    assert torch.equal(a, sampling.sample_sequence(program, 512, 8, 3))
    assert sampling.sample_sequence(program, 512, 1, 3).shape == (1, 1)


def test_importable_from_evaluate():
    from qcompiler.evaluate import sample_sequence

    assert sample_sequence is sampling.sample_sequence


def test_sampler_cached_per_program_and_rebuilt_when_it_changes():
    program = zoo.load("llama-tiny")
    first = sampling.fast_sampler(program)
    assert sampling.fast_sampler(program) is first
    assert sampling.fast_sampler(program.clone()) is not first
    name = "model.layers.0.mlp.down_proj.weight"
    assert first.hf.get_parameter(name) is program.get_tensor(name)  # shared, not copied
    program.set_tensor(name, program.get_tensor(name) * 2)
    again = sampling.fast_sampler(program)
    assert again is not None and again is not first
    sampling.release(program)
    assert sampling.fast_sampler(program) is not again


def test_function_preserving_rotation_still_samples_the_programs_distribution():
    """rotate{kind=hadamard} after fold-norms leaves the function (and HF's) unchanged: the
    check accepts it, and the logits used are the rotated program's."""
    program = zoo.load("llama-tiny")
    run_pipeline(program, "canonicalize,fold-norms,rotate{kind=hadamard}", PassContext(quiet=True))
    assert _hf_computes_the_program(program)
    assert sampling.fast_sampler(program) is not None
    ids, used = sampling.sample_with_logits(program, 512, 24, 0, 1)
    _assert_program_logits(program, ids, used)


def _scale_logits(program, factor):
    """Same tensors and names as HF, another function: logits times `factor`."""
    graph = program.graph
    out = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(out):
        scaled = graph.call_function(torch.ops.aten.mul.Tensor, (out.args[0], factor))
    out.args = (scaled,)
    program.recompile()


def _hf_computes_the_program(program):
    """Whether the HF model of the config, given the program's tensors, computes the program's
    logits (False when the tensors do not even fit it)."""
    hf = sampling._hf_model(program.meta["config"])
    if not sampling._attach(hf, program):
        return False
    probe = torch.arange(2, 14)[None]
    with torch.no_grad():
        got = hf(input_ids=probe, use_cache=False).logits
    return torch.allclose(got, program(probe), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("change", [
    "canonicalize,fold-norms,rotate{kind=hadamard,online-down=true}",
    "lower-datatype{format=razer4}",
    "scale-logits",
])
def test_changed_programs_take_the_fallback_and_still_sample(change):
    program = zoo.load("llama-tiny")
    if change == "scale-logits":
        _scale_logits(program, 1.5)
    else:
        run_pipeline(program, change, PassContext(quiet=True))
    assert not _hf_computes_the_program(program)
    assert sampling.fast_sampler(program) is None
    ids, used = sampling.sample_with_logits(program, 512, 12, 0, 1)
    assert ids.shape == (1, 12) and int(ids.max()) < 512
    _assert_program_logits(program, ids, used)


def test_non_hf_programs_take_the_fallback(mixed_program):
    assert sampling.fast_sampler(mixed_program) is None  # kind "module", no HF config
    program = zoo.load("llama-tiny")
    program.meta["config"] = {**program.meta["config"], "model_type": "no-such-model"}
    assert sampling.fast_sampler(program) is None
    assert sampling.sample_sequence(program, 512, 6, 0, 1).shape == (1, 6)


class TinyLM(torch.nn.Module):
    """ids [1, T] -> logits [1, T, 32], not a Hugging Face model."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(32, 16)
        self.head = torch.nn.Linear(16, 32)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).cumsum(dim=1))


def test_plain_modules_and_callables_take_the_fallback():
    torch.manual_seed(0)
    program = capture_module(TinyLM().eval(), (torch.randint(32, (1, 8)),), source="tiny")
    program.kind = "causal-lm"
    assert sampling.fast_sampler(program) is None
    ids, used = sampling.sample_with_logits(program, 32, 10, 0)
    _assert_program_logits(program, ids, used)
    reference = zoo.load("llama-tiny")
    assert sampling.fast_sampler(lambda x: reference(x)) is None
    assert sampling.sample_sequence(lambda x: reference(x), 512, 8, 0, 1).shape == (1, 8)

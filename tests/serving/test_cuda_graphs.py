"""CUDA-graph decoding (qcompiler/cuda_graphs.py, issue 11 item 5), run on the CPU up to the
first CUDA call: torch.cuda's graph API is replaced by a recording fake (fake_cuda_graphs.py)
whose replay re-runs the captured ops on the captured tensors."""

from __future__ import annotations

import warnings

import pytest
import torch

from qcompiler import cuda_graphs, formats, zoo
from qcompiler.decode_program import build_decode_program
from qcompiler.errors import QCompilerError
from qcompiler.generation import generate

import fake_cuda_graphs
from serving_helpers import lowered


@pytest.fixture(scope="module")
def int4_llama():
    return lowered("llama-tiny", "int4")


def prompts(batch: int, seed: int = 4, vocab: int = 512):
    ids = torch.randint(3, vocab, (batch, 7), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    return ids.masked_fill(mask == 0, 0), mask


def test_graphed_generate_equals_eager_and_reuses_buckets(int4_llama, monkeypatch):
    fake = fake_cuda_graphs.install(monkeypatch)
    decoder = build_decode_program(int4_llama)
    monkeypatch.setattr("qcompiler.generation._decoder", lambda model: decoder)
    ids, mask = prompts(3)
    want = generate(int4_llama, ids, 9, attention_mask=mask, eos_token_id=[], cuda_graphs=False)
    got = generate(int4_llama, ids, 9, attention_mask=mask, eos_token_id=[], cuda_graphs=True)
    assert torch.equal(got, want)
    graphs = decoder.cuda_graphs
    state = graphs.states[(4, 256)]  # batch 3 -> bucket 4; 7 + 9 slots -> 256 (the model's max)
    assert len(fake.created) == 1 and state.graph is fake.created[0]
    assert state.replays == 8 and state.graph.replays == 8  # the prefill gives the first token
    buffers = [t.data_ptr() for t in (*state.caches, state.tokens, state.logits)]

    one = generate(int4_llama, ids[1:2], 5, eos_token_id=[], cuda_graphs=True)
    assert torch.equal(one, generate(int4_llama, ids[1:2], 5, eos_token_id=[],
                                     cuda_graphs=False))
    assert set(graphs.states) == {(4, 256), (1, 256)} and len(fake.created) == 2

    again = generate(int4_llama, ids[:2], 4, attention_mask=mask[:2], eos_token_id=[],
                     cuda_graphs=True)  # batch 2 -> bucket 2: a third graph
    assert torch.equal(again, want[:2, :11])
    ids3, mask3 = prompts(3, seed=8)
    fresh = generate(int4_llama, ids3, 6, attention_mask=mask3, eos_token_id=[],
                     cuda_graphs=True)  # bucket 4 again: same buffers, same graph, no capture
    assert torch.equal(fresh, generate(int4_llama, ids3, 6, attention_mask=mask3,
                                       eos_token_id=[], cuda_graphs=False))
    assert len(fake.created) == 3 and graphs.states[(4, 256)] is state
    assert [t.data_ptr() for t in (*state.caches, state.tokens, state.logits)] == buffers
    assert state.graph.replays == 8 + 5


def test_replay_reads_the_static_buffers(int4_llama, monkeypatch):
    """After capture, new tokens in the static inputs give the eager decoder's logits."""
    fake_cuda_graphs.install(monkeypatch)
    decoder = build_decode_program(int4_llama)
    ids, mask = prompts(2)
    graphs = cuda_graphs.graphs_for(decoder, max_length=256)
    state = graphs.state(2, 20, ids.device)
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    state.prefill(ids, mask.bool(), positions)
    eager_caches = [c[:2].clone() for c in state.caches]
    slots = state.slots[:2].clone()
    for step, token in enumerate(([5, 9], [11, 2], [300, 7])):
        tokens = torch.tensor(token)[:, None]
        pos = positions[:, -1:] + 1 + step
        slot = torch.tensor([7 + step])
        got = state.step(tokens, pos, slot).clone()
        attn = cuda_graphs.attention_mask_4d(slots, slot)
        want = decoder(tokens, pos, slot, attn, eager_caches)[:, -1]
        assert torch.equal(got, want), step
    assert state.graph.replays == 3


@pytest.mark.parametrize("kv", ["int4", "razer4"])
def test_a_quantized_kv_cache_is_captured(kv, monkeypatch):
    """Quantizing a step's keys checks them for NaN on the host (formats' _check_input), except
    while the stream is capturing: a KV4 step is captured (nothing in it synchronizes, which
    the fake would raise on: nor the scale search's early exit or RaZeR's canonical pass,
    which skip their host reads too), its replays give the eager tokens, and outside a capture
    the check still rejects NaN."""
    fake = fake_cuda_graphs.install(monkeypatch)
    program = lowered("qwen2-tiny", "nvfp4", kv)
    decoder = build_decode_program(program)
    assert any(not dtype.is_floating_point for _, _, dtype in decoder.cache_layout)
    ids, mask = prompts(2, vocab=int(program.meta["config"]["vocab_size"]))
    monkeypatch.setattr("qcompiler.generation._decoder", lambda model: decoder)
    want = generate(program, ids, 6, attention_mask=mask, eos_token_id=[], cuda_graphs=False)
    fake.created.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "decode steps run without CUDA graphs"
        got = generate(program, ids, 6, attention_mask=mask, eos_token_id=[], cuda_graphs=True)
    assert torch.equal(got, want)
    state = decoder.cuda_graphs.states[(2, 256)]
    assert len(fake.created) == 1 and state.graph is fake.created[0]
    assert state.graph.replays == 5  # the prefill gives the first token
    fmt, group = _kv_format(decoder)
    bad = torch.ones(2, 4 * group)
    bad[1, 3] = float("nan")
    with pytest.raises(QCompilerError, match="NaN/Inf"):
        formats.get(fmt).quantize(bad, group_size=group, search="rtn")


def _kv_format(decoder) -> tuple[str, int]:
    """(format, group size) of a decoder's quantized caches (its quantized_kv_update nodes)."""
    for node in decoder.gm.graph.nodes:
        if getattr(node.target, "__name__", "") == "quantized_kv_update":
            return node.args[3], node.args[4]
    raise AssertionError("no quantized KV cache")


def test_a_failed_capture_falls_back_to_eager_steps(int4_llama, monkeypatch):
    fake_cuda_graphs.install(monkeypatch)
    decoder = build_decode_program(int4_llama)
    monkeypatch.setattr("qcompiler.generation._decoder", lambda model: decoder)

    def broken(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "graph", broken)
    ids, mask = prompts(2)
    want = generate(int4_llama, ids, 5, attention_mask=mask, eos_token_id=[], cuda_graphs=False)
    with pytest.warns(UserWarning, match="capture failed"):
        got = generate(int4_llama, ids, 5, attention_mask=mask, eos_token_id=[],
                       cuda_graphs=True)
    assert torch.equal(got, want)


def test_buffer_sets_are_bounded(int4_llama):
    decoder = build_decode_program(int4_llama, check=False)
    graphs = cuda_graphs.graphs_for(decoder)
    first = graphs.state(1, 10, torch.device("cpu"))
    for b in (2, 4, 8, 16):
        graphs.state(b, 10, torch.device("cpu"))
    assert len(graphs.states) == cuda_graphs.MAX_STATES and (1, 256) not in graphs.states
    assert graphs.state(16, 10, torch.device("cpu")) is graphs.states[(16, 256)]
    assert graphs.state(1, 10, torch.device("cpu")) is not first  # rebuilt after eviction


def test_buckets_and_lengths():
    assert [cuda_graphs.batch_bucket(b) for b in (1, 2, 3, 5, 16, 17, 64, 65)] == \
        [1, 2, 4, 8, 16, 32, 64, 65]
    assert cuda_graphs.cache_length(17, None) == 256
    assert cuda_graphs.cache_length(257, 4096) == 512
    assert cuda_graphs.cache_length(300, 300) == 300


def test_on_by_default_on_cuda_only(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not cuda_graphs.wanted(cpu, None)
    assert cuda_graphs.wanted(cuda, None)
    assert not cuda_graphs.wanted(cuda, False)
    monkeypatch.setenv(cuda_graphs.ENV, "0")
    assert not cuda_graphs.wanted(cuda, None)
    with pytest.raises(QCompilerError, match="needs a CUDA device"):
        cuda_graphs.wanted(cpu, True)
    with pytest.raises(QCompilerError, match="needs a CUDA device"):
        generate(zoo.load("llama-tiny"), torch.tensor([[5, 6]]), 2, cuda_graphs=True)

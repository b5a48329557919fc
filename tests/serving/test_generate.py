"""`generate` as Hugging Face's: greedy, padding, EOS, sampling (issue 11, item 3)."""

from __future__ import annotations

import pytest
import torch

import qcompiler
from qcompiler import zoo
from qcompiler.generation import filter_logits, generate


@pytest.fixture(scope="module")
def llama():
    return zoo.load("llama-tiny"), zoo.build_module("llama-tiny")


def prompts(vocab: int = 512):
    ids = torch.randint(3, vocab, (3, 7), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding: prompts of 4, 6 and 7 tokens
    mask[1, :1] = 0
    return ids.masked_fill(mask == 0, 0), mask


def test_greedy_equals_hf_with_left_padding(llama):
    program, hf = llama
    ids, mask = prompts()
    want = hf.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    assert torch.equal(generate(program, ids, 12, attention_mask=mask), want)


def test_int8_lowering_equals_hf_up_to_near_ties(llama):
    """int8 is near-lossless: tokens equal HF's until a step where HF's top-2 logits are closer
    than twice the int8 logit error (a tie the rounding may break either way)."""
    program, hf = llama
    ids, mask = prompts()
    want = hf.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    int8 = qcompiler.compile(zoo.load("llama-tiny"), format="int8", quiet=True).program
    got = generate(int8, ids, 12, attention_mask=mask)
    for row in range(ids.shape[0]):
        diff = (got[row] != want[row]).nonzero()
        if len(diff) == 0:
            continue
        prefix = want[row:row + 1, int((mask[row] == 0).sum()):int(diff[0])]
        fp, q = program(prefix)[0, -1], int8(prefix)[0, -1]
        top = fp.topk(2).values
        assert float(top[0] - top[1]) < 2 * float((fp - q).abs().max()), (row, int(diff[0]))
    assert (got == want).float().mean() > 0.9


def test_padded_rows_equal_unpadded_prompts(llama):
    program, _ = llama
    ids, mask = prompts()
    batch = generate(program, ids, 8, attention_mask=mask, eos_token_id=[])
    for row in range(3):
        alone = generate(program, ids[row:row + 1, int((mask[row] == 0).sum()):], 8,
                         eos_token_id=[])
        assert torch.equal(batch[row, -alone.shape[1]:], alone[0])


def test_cached_equals_uncached_generation(llama):
    program, _ = llama
    ids = prompts()[0][1:, 1:]
    assert torch.equal(generate(program, ids, 10, eos_token_id=[]),
                       generate(program, ids, 10, eos_token_id=[], use_cache=False))


def test_eos_stops_each_sequence(llama):
    program, _ = llama
    ids = prompts()[0][1:, 1:]
    t = ids.shape[1]
    free = generate(program, ids, 10, eos_token_id=[])
    eos = int(free[0, t + 2])  # sequence 0 says it within three tokens
    stop = t + int((free[0, t:] == eos).nonzero()[0]) + 1
    out = generate(program, ids, 10, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(out[0, :stop], free[0, :stop])
    assert (out[0, stop:] == 0).all()  # padded after its EOS
    said = (free[1, t:] == eos).nonzero()
    end = t + int(said[0]) + 1 if len(said) else free.shape[1]
    assert torch.equal(out[1, :end], free[1, :end])  # sequence 1 runs on until its own EOS
    assert out.shape[1] == max(stop, end)  # and generation ends when both have ended
    steps = []
    generate(program, ids[:1], 10, eos_token_id=eos, streamer=steps.append)
    assert len(steps) == stop - t  # the streamer saw every token, the last one EOS
    assert int(steps[-1][0]) == eos


def test_sampling_is_seeded_and_top_k_1_is_greedy(llama):
    program, _ = llama
    ids = prompts()[0][2:]
    greedy = generate(program, ids, 6, eos_token_id=[])
    assert torch.equal(generate(program, ids, 6, do_sample=True, top_k=1, eos_token_id=[]),
                       greedy)
    a, b = (generate(program, ids, 6, do_sample=True, temperature=0.7, top_p=0.9,
                     eos_token_id=[], generator=torch.Generator().manual_seed(7))
            for _ in range(2))
    assert torch.equal(a, b)


def test_filters_match_hf_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    scores = torch.randn(4, 50, generator=torch.Generator().manual_seed(5))
    want = TopPLogitsWarper(0.8)(None, TopKLogitsWarper(10)(None, scores.clone()))
    assert torch.equal(filter_logits(scores, 10, 0.8), want)

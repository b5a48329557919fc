"""The decode program (KV cache) computes the uncached logits (issue 11, item 2)."""

from __future__ import annotations

import pytest
import torch

from qcompiler import zoo
from qcompiler.decode_program import DecodeUnsupported, build_decode_program
from qcompiler.ir import print_program
from qcompiler.program import Program
from qcompiler.runtime import generate

from serving_helpers import REL, cached_logits, lowered, rel_err


def check(program, batch: int = 2, length: int = 11, prefill: int = 4, **build) -> float:
    vocab = program.meta["config"]["vocab_size"]
    g = torch.Generator().manual_seed(batch * 100 + length)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    decoder = build_decode_program(program, **build)
    err = rel_err(cached_logits(decoder, ids, prefill), program(ids))
    assert err <= REL, err
    return err


@pytest.mark.parametrize("name", ["llama-tiny", "qwen2-tiny", "stories260k"])
def test_fp_models(name):
    check(zoo.load(name))


@pytest.mark.parametrize("name, fmt, kv, extra", [
    ("llama-tiny", "razer4", "fp4", {}),
    ("qwen2-tiny", "nvfp4", "int4", {}),
    ("stories260k", "int4", "razer4", {"group-size": 32, "on-indivisible": "pad"}),
])
def test_quantized_models_with_quantized_kv(name, fmt, kv, extra):
    program = lowered(name, fmt, kv, **extra)
    assert any("quantize_kv" in str(n.target) for n in program.graph.nodes)
    check(program)
    check(program, dequantize_weights=True)


def test_every_weight_format(format_programs):
    for formats, program in format_programs:
        for dequantize in (False, True):
            try:
                check(program, batch=3, dequantize_weights=dequantize)
            except AssertionError as e:
                raise AssertionError(f"{formats} dequantize={dequantize}: {e}") from None


def test_dequantized_weights_are_the_reference_numbers():
    program = lowered("llama-tiny", "int4")
    ids = torch.randint(3, 500, (2, 7), generator=torch.Generator().manual_seed(3))
    a = cached_logits(build_decode_program(program), ids, 7)
    b = cached_logits(build_decode_program(program, dequantize_weights=True), ids, 7)
    assert torch.equal(a, b)


def test_decode_ir_shows_the_cache():
    decoder = build_decode_program(zoo.load("llama-tiny"))
    text = print_program(Program(decoder.gm, (), decoder.input_names, [], "causal-lm"))
    head = text.splitlines()[1]
    assert ("%attn_mask: tensor<?x1x?x?xi1>, %k_cache_0: tensor<?x2x?x32xf32>, "
            "%v_cache_0: tensor<?x2x?x32xf32>") in head
    assert "%k_cache_0_written = aten.index_copy_(%k_cache_0, 2, %cache_position, " in text
    assert "aten.repeat_interleave.self_int(%k_cache_0_written, 2, 1)" in text
    assert text.count("aten.index_copy_") == 4  # k and v of each of the 2 layers
    assert decoder.cache_layout == [(2, 32, torch.float32)] * 4


def test_quantize_kv_caches_store_packed_parts():
    decoder = build_decode_program(lowered("llama-tiny", "int4", "razer4"))
    text = print_program(Program(decoder.gm, (), decoder.input_names, [], "causal-lm"))
    assert "%k_cache_0_codes: tensor<?x2x?x16xui8>, %k_cache_0_scales: tensor<?x2x?x1xf16>, " \
           "%k_cache_0_meta: tensor<?x2x?x1xui8>" in text
    assert ("py.quantized_kv_update([%k_cache_0_codes, %k_cache_0_scales, %k_cache_0_meta], "
            "%cache_position, ") in text
    assert "qc.quantize_kv" not in text  # the cache itself is the quantization
    caches = decoder.new_cache(1, 100, "cpu")
    stored = sum(c.numel() * c.element_size() for c in caches)
    assert stored == 2 * 2 * 2 * 100 * (16 + 2 + 1)  # layers x k/v x heads x slots x bytes


def test_models_without_rope_have_no_decode_path_and_still_generate():
    program = zoo.load("gpt2-tiny")
    with pytest.raises(DecodeUnsupported, match="rotary"):
        build_decode_program(program)
    ids = torch.tensor([[1, 5, 9]])
    out = generate(program, ids, 4, eos_token_id=[])
    manual = ids
    for _ in range(4):
        manual = torch.cat([manual, program(manual)[:, -1:].argmax(-1)], dim=-1)
    assert torch.equal(out, manual)

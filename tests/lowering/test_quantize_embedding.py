"""quantize-embedding and --quantize-head: int8 rows for the token embedding, the LM head in the
weight format; the artifact shrinks, the lookups stay exact to the int8 table, generation works."""

from __future__ import annotations

import pytest
import torch
import transformers

import qcompiler
from qcompiler import zoo
from qcompiler.decode_check import run_cached
from qcompiler.decode_program import build_decode_program
from qcompiler.pipeline import resolve_pipeline
from qcompiler.passes.quantize_embedding import dequantize_rows, quantize_rows


def test_int8_rows_error_is_half_a_step():
    torch.manual_seed(0)
    table = torch.randn(300, 64) * torch.rand(300, 1) * 3
    table[7] = 0  # an all-zero row
    codes, scales = quantize_rows(table)
    assert codes.dtype == torch.int8 and scales.dtype == torch.float16
    assert scales.shape == (300, 1) and int(codes.abs().max()) <= 127
    err = (dequantize_rows(codes, scales) - table).abs()
    step = scales.float()
    # half a step from rounding, plus the fp16 scale's own rounding (2^-11 relative) at 127 steps
    assert bool((err <= step / 2 + table.abs().amax(1, keepdim=True) * 2 ** -10 + 1e-12).all())
    assert torch.equal(codes[7], torch.zeros(64, dtype=torch.int8))


@pytest.fixture(scope="module")
def tied_model():
    config = zoo.build_module("llama-tiny").config
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def _compile(model, out, head: bool, embeddings: bool):
    spec = resolve_pipeline(None, "int8", None, quantize_head=head,
                            quantize_embeddings=embeddings)
    return qcompiler.compile(model, pipeline=spec, out=out, quiet=True)


def test_head_and_embedding_quantized_shrink_the_artifact(tied_model, tmp_path):
    plain = _compile(tied_model, tmp_path / "plain", False, False)
    both = _compile(tied_model, tmp_path / "both", True, True)
    names = set(both.program.tensors())
    assert {"lm_head.weight_int8", "lm_head.weight_row_scales", "lm_head.codes"} <= names
    assert "lm_head.weight" not in names  # the fp table is gone (dce)
    config = tied_model.config
    # one fp32 table (tied: stored once) becomes two int8 copies (lookup table, head codes)
    saved = config.vocab_size * config.hidden_size * (4 - 2)
    size = lambda p: (p / "weights.safetensors").stat().st_size  # noqa: E731
    assert size(tmp_path / "plain") - size(tmp_path / "both") > 0.95 * saved
    ids = torch.randint(0, config.vocab_size, (2, 9))
    loaded = qcompiler.load(tmp_path / "both")
    with torch.no_grad():
        ref, out = plain.program(ids), loaded(ids)
    assert float((out - ref).abs().max() / ref.abs().max()) < 0.05  # int8 head and table


def test_tied_table_with_fp_head_is_left_alone(tied_model, tmp_path):
    result = _compile(tied_model, tmp_path / "only-embed", False, True)
    assert "lm_head.weight" in result.program.tensors()
    assert not any(n.endswith("_int8") for n in result.program.tensors())


def test_lookup_is_the_int8_table_and_decoding_agrees(tmp_path):
    model = zoo.load("llama-tiny")
    spec = resolve_pipeline(None, "int4", None, quantize_embeddings=True)
    program = qcompiler.compile(model, pipeline=spec, quiet=True).program
    codes = program.get_tensor("model.embed_tokens.weight_int8")
    scales = program.get_tensor("model.embed_tokens.weight_row_scales")
    original = zoo.load("llama-tiny").get_tensor("model.embed_tokens.weight")
    assert torch.equal(codes, quantize_rows(original)[0])
    ids = torch.randint(0, codes.shape[0], (2, 12))
    with torch.no_grad():
        full = program(ids)
    cached = run_cached(build_decode_program(program), ids, prefill=5)
    assert float((cached - full).abs().max() / full.abs().max()) < 1e-4
    assert scales.dtype == torch.float16

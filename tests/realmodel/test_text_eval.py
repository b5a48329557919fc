"""Standard perplexity windows (BOS per window), agreement with a plain HF loop, held-out
calibration text and the text/sampled mix; on a tiny Llama with a word-level tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import qcompiler
from qcompiler.calibration import CalibrationConfig, make_batches
from qcompiler.cli import eval_cmd, qcompile
from qcompiler.evaluate import evaluate
from qcompiler.text_data import calibration_part, evaluation_windows, split_lines

from realmodel_helpers import hf_perplexity, word_text, word_tokenizer


def test_every_window_starts_with_bos_and_every_text_token_is_predicted():
    tok = word_tokenizer()
    text = word_text(10)  # 200 words
    cut = evaluation_windows(text, tok, window=16, count=100)
    assert all(int(w[0, 0]) == 1 for w in cut.windows)  # BOS <s> = 1 leads every window
    assert [w.shape[-1] for w in cut.windows] == [16] * 13 + [1 + 200 - 13 * 15]
    assert cut.predicted == 200 and cut.text_tokens == 200  # each text token predicted once
    body = torch.cat([w[0, 1:] for w in cut.windows])
    assert torch.equal(body, torch.as_tensor(tok(text)["input_ids"]))  # no token lost or doubled


def test_no_bos_windows_are_plain_chunks():
    tok = word_tokenizer()
    text = word_text(10)
    off = evaluation_windows(text, tok, window=16, count=3, bos=False)
    ids = torch.as_tensor(tok(text)["input_ids"])
    assert [w.shape[-1] for w in off.windows] == [16, 16, 16]
    assert torch.equal(off.windows[1][0], ids[16:32]) and off.predicted == 45
    assert off.bos_token is None and off.bos_why_not == "turned off"
    none = evaluation_windows(text, word_tokenizer(bos=False), window=16, count=1)
    assert none.bos_token is None and none.bos_why_not == "the tokenizer defines none"


def test_held_out_split_is_by_lines():
    text = word_text(9)
    first, second = split_lines(text)
    assert first + second == text and first.count("\n") == 4 and second.count("\n") == 5
    assert calibration_part("one line only") == "one line only"
    tok = word_tokenizer()
    assert evaluation_windows(text, tok, window=16, count=2).held_out  # 30 of 80 first-half tokens
    assert not evaluation_windows(text, tok, window=16, count=7).held_out  # 105 > 80


def test_perplexity_matches_plain_hf_loop(llama_with_tokenizer, llama_program):
    """The fp reference through our captured program vs HF's own loss: 1e-4 relative."""
    tok = word_tokenizer()
    text = word_text(30)
    program = llama_program
    result = evaluate(program, program, kind="causal-lm", vocab_size=512, text=text,
                      tokenizer=tok, samples=4, seq_len=32)
    hf = transformers.AutoModelForCausalLM.from_pretrained(llama_with_tokenizer).eval()
    windows = evaluation_windows(text, tok, window=32, count=4).windows
    expected = hf_perplexity(hf, windows)
    assert result.perplexity_reference == pytest.approx(expected, rel=1e-4)
    assert result.perplexity == pytest.approx(expected, rel=1e-4)
    assert result.predicted_tokens == 4 * 31 and result.window == 32 and result.bos == "<s>"
    off = evaluate(program, program, kind="causal-lm", vocab_size=512, text=text,
                   tokenizer=tok, samples=4, seq_len=32, bos=False)
    plain = evaluation_windows(text, tok, window=32, count=4, bos=False).windows
    assert off.perplexity == pytest.approx(hf_perplexity(hf, plain), rel=1e-4)
    assert off.bos is None and "no BOS: turned off" in off.text


def test_eval_cli_states_window_bos_and_tokens(llama_with_tokenizer, tmp_path, capsys):
    out = tmp_path / "out"
    qcompiler.compile(llama_with_tokenizer, format="int4", out=out, quiet=True)
    text = tmp_path / "text.txt"
    text.write_text(word_text(40))
    report = tmp_path / "eval.json"
    assert eval_cmd.main([str(out), "--text", str(text), "--samples", "3", "--seq-len", "24",
                          "--json", str(report), "-q"]) == 0
    stdout = capsys.readouterr().out
    assert "3 windows of 24 tokens (each starts with BOS <s>), 69 predicted tokens" in stdout
    assert "held out from --calib" in stdout and "perplexity (reference)" in stdout
    numbers = json.loads(report.read_text())
    assert numbers["predicted_tokens"] == 69 and numbers["bos"] == "<s>"
    hf = transformers.AutoModelForCausalLM.from_pretrained(llama_with_tokenizer).eval()
    windows = evaluation_windows(text.read_text(), word_tokenizer(), window=24, count=3).windows
    assert numbers["perplexity_reference"] == pytest.approx(hf_perplexity(hf, windows), rel=1e-4)
    # size against the fp16 checkpoint (2 bytes per parameter; a buffer or two may add a few)
    assert "artifact size" in stdout and "of the fp16 checkpoint" in stdout
    assert numbers["artifact_bytes"] == (out / "weights.safetensors").stat().st_size
    assert 0 <= numbers["fp16_bytes"] - 2 * hf.num_parameters() <= 2 * 1024
    assert numbers["bits_per_parameter"] == pytest.approx(
        16 * numbers["artifact_bytes"] / numbers["fp16_bytes"])
    assert eval_cmd.build_parser().parse_args([str(out), "--no-bos"]).no_bos


def test_text_calibration_reads_only_the_second_half(llama_program):
    program = llama_program
    first = " ".join(f"w{i}" for i in range(100)) + "\n"  # ids 3..102
    second = " ".join(f"w{i}" for i in range(300, 400)) + "\n"  # ids 303..402
    batches = make_batches(program, CalibrationConfig(text=first + second, samples=4, seqlen=20))
    ids = torch.cat([b.reshape(-1) for b in batches])
    assert len(batches) == 4 and int(ids.min()) >= 303  # nothing from the evaluation half


def test_text_and_sampled_mix(llama_program):
    program = llama_program
    text = word_text(20)
    batches = make_batches(program, CalibrationConfig(text=text, samples=2, seqlen=12,
                                                      sampled=3))
    assert [b.shape[-1] for b in batches] == [12] * 5
    assert torch.equal(batches[0][0], torch.as_tensor(
        word_tokenizer()(calibration_part(text))["input_ids"][:12]))


def test_cli_mixes_text_and_sampled(tmp_path):
    from qcompiler.cli import common

    text = tmp_path / "calib.txt"
    text.write_text(word_text(4))
    args = qcompile.build_parser().parse_args(
        ["zoo:llama-tiny", "--calib", str(text), "--calib-sampled", "3", "--calib-samples", "5"])
    cfg = common.calibration_config(args)
    assert cfg.sampled == 3 and cfg.samples == 5 and cfg.text == word_text(4)


def test_calib_sampled_needs_calib(capsys):
    assert qcompile.main(["zoo:llama-tiny", "--format", "int4", "--calib-sampled", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--calib-sampled mixes sampled sequences into --calib" in err[0]

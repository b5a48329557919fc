"""`qcompile eval` and `qcompile run`, and the quality ordering the evaluation must show."""

from __future__ import annotations

import json

import pytest
import torch

import qcompiler
from qcompiler import zoo
from qcompiler.cli import eval_cmd, run_cmd
from qcompiler.evaluate import evaluate


def one_line_error(err: str, fragment: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err


def test_eval_decoder_reports_kl(llama_razer4, tmp_path, capsys):
    out, _ = llama_razer4
    report = tmp_path / "eval.json"
    code = eval_cmd.main(["eval", str(out), "--reference", "zoo:llama-tiny", "--samples", "2",
                          "--seq-len", "12", "--json", str(report)])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "KL divergence, mean" in stdout and "KL divergence, 99th pct" in stdout
    assert "top-1 agreement" in stdout and "perplexity" not in stdout
    numbers = json.loads(report.read_text())
    assert numbers["data"] == "sampled" and numbers["tokens"] == 24
    assert 0 < numbers["kl_mean"] <= numbers["kl_p99"] <= numbers["kl_max"]
    assert 0 <= numbers["top1_agreement"] <= 1


def test_eval_with_text_needs_a_tokenizer(llama_razer4, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("hello world")
    code = eval_cmd.main([str(llama_razer4[0]), "--reference", "zoo:llama-tiny",
                          "--text", str(text)])
    assert code == 1
    one_line_error(capsys.readouterr().err, "--text needs a tokenizer")


def test_eval_rejects_a_different_reference(llama_razer4, capsys):
    code = eval_cmd.main([str(llama_razer4[0]), "--reference", "zoo:bert-tiny", "--samples", "1"])
    assert code == 1
    one_line_error(capsys.readouterr().err, "is of kind 'encoder' but the artifact is 'causal-lm'")


def test_int8_weights_beat_4bit_on_kl(llama_razer4):
    reference = zoo.load("llama-tiny")
    programs = {"razer4": llama_razer4[1].program}
    for fmt in ("int8", "int4"):
        programs[fmt] = qcompiler.compile(zoo.load("llama-tiny"), format=fmt, quiet=True).program
    kl = {fmt: evaluate(p, reference, kind="causal-lm", vocab_size=512, samples=2,
                        seq_len=16).kl_mean for fmt, p in programs.items()}
    assert kl["int8"] < kl["razer4"] and kl["int8"] < kl["int4"], kl


def test_minilm_roundtrip_and_razer4_beats_fp4(tmp_path, capsys):
    """MiniLM through an artifact (bit-exact after reload), then embedding cosine against the
    fp model: razer4 above fp4 at g128. RTN keeps the test fast; the default pipeline's numbers
    (clip search) are in the report of this work."""
    reference = zoo.load("minilm")
    cosine = {}
    for fmt in ("razer4", "fp4"):
        spec = f"canonicalize,lower-datatype{{format={fmt},group-size=128,search=rtn}},dce"
        out = tmp_path / fmt if fmt == "razer4" else None
        program = qcompiler.compile(zoo.load("minilm"), pipeline=spec, out=out,
                                    emit="artifact" if out else "program", quiet=True).program
        model = program
        if out is not None:
            model = qcompiler.load(out)
            ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
            assert torch.equal(model(ids), program(ids))
        result = evaluate(model, reference, kind="encoder", vocab_size=30522, samples=4,
                          seq_len=32)
        assert result.data == "random" and result.kl_mean is None
        cosine[fmt] = result.cosine_mean
    assert cosine["razer4"] > cosine["fp4"] > 0.9, cosine
    assert run_cmd.main([str(tmp_path / "razer4"), "--ids", "101,102"]) == 1
    one_line_error(capsys.readouterr().err, "is not a decoder (kind 'encoder')")


def test_run_generates_token_ids(llama_razer4, capsys):
    code = run_cmd.main(["run", str(llama_razer4[0]), "--ids", "1,5,7", "--max-new-tokens", "4"])
    stdout = capsys.readouterr().out
    assert code == 0
    ids = [int(t) for t in stdout.strip().split(",")]
    assert ids[:3] == [1, 5, 7] and len(ids) == 7


@pytest.mark.parametrize("argv, code, fragment", [
    (["--prompt", "hi"], 1, "has no tokenizer; give the prompt as token ids with --ids"),
    (["--ids", "1,x"], 2, "--ids expects comma-separated integers"),
    (["--ids", "99999"], 1, "token id 99999 is outside the vocabulary [0, 512)"),  # issue 11
])
def test_run_errors(llama_razer4, capsys, argv, code, fragment):
    assert run_cmd.main([str(llama_razer4[0]), *argv]) == code
    one_line_error(capsys.readouterr().err, fragment)


def test_run_and_eval_missing_artifact(tmp_path, capsys):
    assert run_cmd.main([str(tmp_path / "nope"), "--ids", "1"]) == 1
    one_line_error(capsys.readouterr().err, "no such artifact")
    assert eval_cmd.main([str(tmp_path), "--reference", "zoo:llama-tiny"]) == 1
    one_line_error(capsys.readouterr().err, "is not a qcompiler artifact")


def test_run_with_a_tokenizer(tmp_path, capsys):
    """An HF directory with a tokenizer: the artifact ships it, --prompt works end to end."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "<s>", "</s>"] + [f"w{i}" for i in range(509)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>",
                                   eos_token="</s>")
    directory = tmp_path / "hf"
    zoo.build_module("llama-tiny").save_pretrained(directory)
    fast.save_pretrained(directory)
    out = tmp_path / "out"
    qcompiler.compile(directory, format="int4", out=out, quiet=True)
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    assert run_cmd.main([str(out), "--prompt", "w1 w2 w3", "--max-new-tokens", "3"]) == 0
    words_out = capsys.readouterr().out.split()
    assert words_out[:3] == ["w1", "w2", "w3"] and len(words_out) <= 6
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"w{i % 50}" for i in range(200)))
    assert eval_cmd.main([str(out), "--reference", str(directory), "--text", str(text),
                          "--samples", "2", "--seq-len", "32", "-q"]) == 0
    assert "perplexity (quantized)" in capsys.readouterr().out

"""Bad input gives one-line errors; `qcompile run` streams, batches and prints the decode IR
(issue 11, items 3 and 7)."""

from __future__ import annotations

import pytest
import torch

import qcompiler
from qcompiler.cli.run_cmd import main as run_main
from qcompiler.errors import QCompilerError


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("serving") / "llama-int4"
    spec = "canonicalize,dce,lower-datatype{format=int4,search=rtn},dce"
    qcompiler.compile("zoo:llama-tiny", pipeline=spec, out=out, quiet=True)
    return out


@pytest.fixture(scope="module")
def model(artifact):
    return qcompiler.load(artifact)


@pytest.mark.parametrize("call, message", [
    (lambda m: m.generate(torch.ones(1, 256, dtype=torch.long)),
     "the prompt has 256 tokens; the model's cache holds 256: shorten the prompt"),
    (lambda m: m.generate(torch.ones(65, 3, dtype=torch.long)),
     "batch of 65 prompts is above the compiled maximum of 64"),
    (lambda m: m.generate(torch.tensor([[1, 512]])),
     r"token id 512 is outside the vocabulary \[0, 512\)"),
    (lambda m: m.generate(torch.tensor([[1, -1]])), "token id -1 is outside the vocabulary"),
    (lambda m: m(torch.tensor([[1, 600]])), "token id 600 is outside the vocabulary"),
    (lambda m: m(torch.ones(65, 3, dtype=torch.long)), "above the compiled maximum of 64"),
    (lambda m: m.generate(torch.ones(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 4)),
     "attention_mask has shape"),
    (lambda m: m.generate(torch.ones(1, 3, dtype=torch.long), do_sample=True, top_p=0),
     r"top_p must be in \(0, 1\]"),
    (lambda m: m.generate(torch.ones(1, 3), 4), "input_ids must be an integer tensor"),
])
def test_api_errors(model, call, message):
    with pytest.raises(QCompilerError, match=message) as e:
        call(model)
    assert "\n" not in str(e.value)


def test_generation_stops_at_the_maximum_length(model):
    out = model.generate(torch.ones(1, 250, dtype=torch.long), 20, eos_token_id=[])
    assert out.shape == (1, 256)


def test_run_streams_the_api_result(model, artifact, capsys):
    want = model.generate(torch.tensor([[1, 403, 407]]), 6)
    assert run_main([str(artifact), "--ids", "1,403,407", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == ",".join(str(int(t)) for t in want[0]) + "\n"


def test_run_batch_file(model, artifact, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1,403,407\n\n1,20\n")
    assert run_main([str(artifact), "--batch-file", str(prompts), "--max-new-tokens", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for line, prompt in zip(lines, ([1, 403, 407], [1, 20]), strict=True):
        alone = model.generate(torch.tensor([prompt]), 5)
        assert line == ",".join(str(int(t)) for t in alone[0])


def test_run_prints_the_decode_ir(artifact, capsys):
    assert run_main([str(artifact), "--print-decode-ir"]) == 0
    text = capsys.readouterr().out
    assert "qc.func @decode(%input_ids: tensor<?x?xi64>, %position_ids" in text
    assert "aten.index_copy_(%v_cache_1, 2, %cache_position" in text
    assert "qc.linear_int4(" in text  # the packed weights, as compiled


@pytest.mark.parametrize("args, message", [
    (["--ids", "1,999"], "error: token id 999 is outside the vocabulary [0, 512)"),
    (["--batch-file", "/nonexistent/prompts.txt"], "error: cannot read --batch-file"),
    (["--prompt", "hello"], "has no tokenizer; give the prompt as token ids with --ids"),
])
def test_run_errors(artifact, args, message, capsys):
    assert run_main([str(artifact), *args]) in (1, 2)
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing printed before the error
    assert message in captured.err and len(captured.err.strip().splitlines()) == 1


def test_cpu_decoding_keeps_quantized_weights_when_dequantized_ones_would_not_fit(
        tmp_path, monkeypatch, capsys):
    """Dequantized once, weights take 4 bytes each (8x the packed codes): the CPU decode path
    does that only when half the available memory holds them, and otherwise decodes with the
    quantized ops: the same tokens, a note on stderr."""
    from qcompiler import dequantized_linears

    out = tmp_path / "a"
    qcompiler.compile("zoo:llama-tiny", format="razer4", out=out, quiet=True)
    ids = torch.tensor([[1, 17, 250, 3]])
    roomy = qcompiler.load(out)
    assert not any("linear_razer4" in str(n.target) for n in roomy.decoder().gm.graph.nodes)
    want = roomy.generate(ids, max_new_tokens=5)
    need = dequantized_linears.dequantized_bytes(roomy.gm)
    assert need == 4 * sum(int(n.kwargs["n"]) * int(n.kwargs["k"]) for n in roomy.gm.graph.nodes
                           if "linear_razer4" in str(n.target))
    monkeypatch.setattr(dequantized_linears, "available_bytes", lambda: 2 * need - 1)
    tight = qcompiler.load(out)
    decoder = tight.decoder()
    assert any("linear_razer4" in str(n.target) for n in decoder.gm.graph.nodes)
    assert "note: running with the quantized weights" in capsys.readouterr().err
    assert torch.equal(tight.generate(ids, max_new_tokens=5), want)
    monkeypatch.setenv("QC_DEQUANTIZE_WEIGHTS", "1")
    assert not any("linear_razer4" in str(n.target)
                   for n in qcompiler.load(out).decoder().gm.graph.nodes)


def test_cpu_forward_uses_weights_dequantized_once_and_shares_them_with_the_decoder(tmp_path):
    """forward() on the CPU runs aten.linear on weights dequantized once (bit-identical to the
    stored graph's quantized ops, which dequantize at every call), the same tensors the decode
    program uses: one dequantized copy per model."""
    out = tmp_path / "a"
    qcompiler.compile("zoo:llama-tiny", format="razer4", out=out, quiet=True)
    model = qcompiler.load(out)
    ids = torch.tensor([[1, 17, 250, 3, 99, 42]])
    with torch.no_grad():
        assert torch.equal(model(ids), model.gm(ids))
    eager = model._eager_graph()
    assert not any("linear_razer4" in str(n.target) for n in eager.graph.nodes)
    decoder = model.decoder()
    eager_weights = {t.data_ptr() for name, t in eager.named_buffers()
                     if name.endswith("_dequantized_weight")}
    decoder_weights = {t.data_ptr() for name, t in decoder.gm.named_buffers()
                       if name.endswith("_dequantized_weight")}
    assert eager_weights and eager_weights == decoder_weights

"""Capture: every source kind gives a Program that computes exactly what the model computes."""

from __future__ import annotations

import pytest
import torch

from qcompiler import capture, zoo
from qcompiler.capture import save_exported
from qcompiler.errors import CaptureError

ARCHS = ["llama-tiny", "qwen2-tiny", "mistral-tiny", "gpt2-tiny", "opt-tiny", "phi3-tiny",
         "bert-tiny", "minilm", "stories260k"]


def reference_output(name: str, ids: torch.Tensor) -> torch.Tensor:
    model = zoo.build_module(name)
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("name", ARCHS)
def test_zoo_capture_matches_eager_at_other_seq_len(name):
    program = zoo.load(name)
    assert program.kind == ("encoder" if name in ("bert-tiny", "minilm") else "causal-lm")
    ids = torch.randint(3, 500, (1, 11), generator=torch.Generator().manual_seed(1))
    got = program(ids)  # 11 != the 16 tokens it was exported with: the length is dynamic
    torch.testing.assert_close(got, reference_output(name, ids), rtol=1e-5, atol=1e-5)
    assert len(list(program.linears())) > 0


def test_weights_keep_their_dotted_names():
    program = zoo.load("llama-tiny")
    names = set(program.tensors())
    assert "model.layers.0.mlp.down_proj.weight" in names
    assert "lm_head.weight" in names
    weights = {n.args[1].target for n in program.linears()}
    assert "model.layers.1.self_attn.q_proj.weight" in weights


def test_hf_directory(tmp_path):
    zoo.build_module("qwen2-tiny").save_pretrained(tmp_path)
    program = capture(tmp_path)
    ids = torch.arange(3, 12).unsqueeze(0)
    torch.testing.assert_close(program(ids), reference_output("qwen2-tiny", ids))
    assert program.meta["model_type"] == "qwen2"


def test_exported_archive_round_trip(tmp_path):
    program = zoo.load("llama-tiny")
    path = tmp_path / "model.anyext"  # any extension: archives are sniffed, not named
    save_exported(program, path)
    again = capture(path)
    assert again.kind == "causal-lm"
    ids = torch.arange(5, 25).unsqueeze(0)
    torch.testing.assert_close(again(ids), program(ids), rtol=0, atol=0)


def test_pickle_needs_trust(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(zoo.build_module("gpt2-tiny"), path)
    with pytest.raises(CaptureError, match="--trust-pickle"):
        capture(path)
    program = capture(path, trust_pickle=True)
    ids = torch.arange(3, 10).unsqueeze(0)
    torch.testing.assert_close(program(ids), reference_output("gpt2-tiny", ids))


def test_plain_module_with_example_inputs():
    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up = torch.nn.Linear(32, 64)
            self.down = torch.nn.Linear(64, 32)

        def forward(self, x):
            return self.down(torch.relu(self.up(x)))

    torch.manual_seed(0)
    module, x = MLP(), torch.randn(2, 8, 32)
    program = capture(module, (x,))
    torch.testing.assert_close(program(x), module(x))
    assert [n.args[1].target for n in program.linears()] == ["up.weight", "down.weight"]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p / "missing", "no such file or directory"),
        (lambda p: (p / "d").mkdir() or p / "d", "without config.json"),
        (lambda p: (p / "notes.txt").write_text("hello") and p / "notes.txt", "is not a model"),
    ],
)
def test_bad_sources_raise_one_line_errors(tmp_path, setup, message):
    with pytest.raises(CaptureError, match=message) as info:
        capture(setup(tmp_path))
    assert "\n" not in str(info.value)


def test_corrupted_safetensors(tmp_path):
    zoo.build_module("llama-tiny").save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CaptureError, match="cannot load the weights"):
        capture(tmp_path)


def test_unknown_architecture(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "no-such-arch"}')
    with pytest.raises(CaptureError, match="not a usable model config"):
        capture(tmp_path)


def test_unknown_zoo_name_suggests():
    with pytest.raises(CaptureError, match="did you mean 'zoo:llama-tiny'"):
        capture("zoo:llama-tiyn")

"""No input runs code unless the user said --trust-pickle: crafted .pt2 archives and artifacts
whose pickled members would create a file are refused by every entry point, and no file appears.
Archives with flipped bytes or native-code members are refused too."""

from __future__ import annotations

import pytest
import torch
from tamper import (add_member, copy_artifact, evil_pickle, flip_stored_byte, rehash,
                    replace_member)

import qcompiler
from qcompiler.capture import capture, save_exported
from qcompiler.cli import eval_cmd, qcompile, run_cmd
from qcompiler.errors import CaptureError, QCompilerError


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(64, 64)
        self.b = torch.nn.Linear(64, 64)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def one_line_error(err: str, fragment: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err


@pytest.fixture
def clean_pt2(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "small.pt2"
    save_exported(capture(Small(), (torch.randn(1, 8, 64),)), path)
    return path


@pytest.fixture
def evil_pt2(clean_pt2, tmp_path):
    marker = tmp_path / "pwned"
    replace_member(clean_pt2, "sample_inputs/model.pt", evil_pickle(marker))
    return clean_pt2, marker


def test_a_clean_archive_still_loads_without_trust(clean_pt2):
    program = capture(clean_pt2)
    assert set(program.tensors()) >= {"a.weight", "b.weight"}


def test_qcompile_refuses_a_pickled_payload(evil_pt2, tmp_path, capsys):
    path, marker = evil_pt2
    code = qcompile.main([str(path), "--format", "int4", "-g", "32", "-o", str(tmp_path / "o")])
    one_line_error(capsys.readouterr().err, "--trust-pickle")
    assert code == 1 and not marker.exists() and not (tmp_path / "o").exists()


def test_api_capture_refuses_a_pickled_payload(evil_pt2):
    path, marker = evil_pt2
    with pytest.raises(CaptureError, match="not plain tensors.*--trust-pickle"):
        capture(path)
    assert not marker.exists()


def test_eval_refuses_a_pickled_reference(llama_razer4, evil_pt2, capsys):
    path, marker = evil_pt2
    code = eval_cmd.main([str(llama_razer4[0]), "--reference", str(path), "--samples", "1"])
    one_line_error(capsys.readouterr().err, "--trust-pickle")
    assert code == 1 and not marker.exists()


@pytest.fixture
def evil_artifact(llama_razer4, tmp_path):
    """The llama-tiny artifact with a payload in program.pt2 and the manifest rehashed."""
    out = copy_artifact(llama_razer4[0], tmp_path / "evil")
    marker = tmp_path / "pwned-artifact"
    replace_member(out / "program.pt2", "sample_inputs/model.pt", evil_pickle(marker))
    rehash(out)
    return out, marker


def test_load_refuses_a_pickled_payload(evil_artifact):
    out, marker = evil_artifact
    with pytest.raises(QCompilerError, match="not plain tensors"):
        qcompiler.load(out)
    assert not marker.exists()


def test_run_and_eval_refuse_a_pickled_artifact(evil_artifact, capsys):
    out, marker = evil_artifact
    assert run_cmd.main([str(out), "--ids", "1,2,3", "--max-new-tokens", "2"]) == 1
    one_line_error(capsys.readouterr().err, "not plain tensors")
    assert eval_cmd.main([str(out), "--reference", "zoo:llama-tiny", "--samples", "1"]) == 1
    one_line_error(capsys.readouterr().err, "not plain tensors")
    assert not marker.exists()


def test_flipped_bytes_in_a_stored_member_are_caught(clean_pt2, tmp_path, capsys):
    flip_stored_byte(clean_pt2, "data/weights/weight_0")
    code = qcompile.main([str(clean_pt2), "--format", "int4", "-g", "32",
                          "-o", str(tmp_path / "o")])
    one_line_error(capsys.readouterr().err, "is corrupted")
    assert code == 1 and not (tmp_path / "o").exists()


def test_native_code_members_are_refused(clean_pt2):
    add_member(clean_pt2, "data/aotinductor/model/model.so", b"\x7fELF not really")
    with pytest.raises(CaptureError, match="compiled native code"):
        capture(clean_pt2)


def test_pickled_checkpoint_in_a_model_directory_is_restricted(tmp_path):
    """An HF directory whose pytorch_model.bin carries a payload: refused, nothing runs."""
    import transformers

    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=2, architectures=["LlamaForCausalLM"])
    model_dir = tmp_path / "hf"
    config.save_pretrained(model_dir)
    marker = tmp_path / "pwned-bin"
    (model_dir / "pytorch_model.bin").write_bytes(evil_pickle(marker))
    with pytest.raises(QCompilerError):
        capture(model_dir)
    assert not marker.exists()

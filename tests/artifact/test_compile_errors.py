"""Bad input to `qcompile MODEL --format F -o OUT`: one `error:` line, exit 1, and no OUT."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

import qcompiler
from qcompiler import zoo
from qcompiler.cli import qcompile
from qcompiler.errors import QCompilerError


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf") / "llama"
    zoo.build_module("llama-tiny").save_pretrained(directory)
    return directory


def compile_fails(argv, capsys, *fragments):
    code = qcompile.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_corrupted_safetensors(hf_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(hf_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    compile_fails([str(broken), "--format", "int4", "-o", str(tmp_path / "out")], capsys,
                  "cannot load the weights in")
    assert not (tmp_path / "out").exists()
    with pytest.raises(QCompilerError, match="model.safetensors is not a valid safetensors file"):
        qcompiler.compile(broken, format="int4", out=tmp_path / "out", stream=True)
    assert not (tmp_path / "out").exists()


def test_unknown_architecture(hf_dir, tmp_path, capsys):
    odd = tmp_path / "odd"
    shutil.copytree(hf_dir, odd)
    config = json.loads((odd / "config.json").read_text())
    config.update(model_type="frobnicator", architectures=["FrobnicatorForCausalLM"])
    (odd / "config.json").write_text(json.dumps(config))
    compile_fails([str(odd), "--format", "int4", "-o", str(tmp_path / "out")], capsys,
                  "config.json is not a usable model config")
    assert not (tmp_path / "out").exists()


def test_nan_weights(hf_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "nan"
    shutil.copytree(hf_dir, bad)
    tensors = load_file(bad / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    compile_fails([str(bad), "--format", "int4", "-o", str(tmp_path / "out"),
                   "--reproducer-dir", str(tmp_path / "repro")], capsys,
                  "lower-datatype: the weight of model.layers.0.mlp.up_proj has 1 NaN/Inf")
    assert not (tmp_path / "out").exists()


def test_group_size_not_dividing_k(tmp_path, capsys):
    compile_fails(["zoo:stories260k", "--format", "razer4", "--group-size", "32", "-o",
                   str(tmp_path / "out"), "--reproducer-dir", str(tmp_path / "repro")], capsys,
                  "group size 32 does not divide K=172 in model.layers.0.mlp.down_proj")
    assert not (tmp_path / "out").exists()


def test_out_exists(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    compile_fails(["zoo:llama-tiny", "--format", "int4", "-o", str(out)], capsys,
                  "already exists; choose another -o or pass --force")
    assert list(out.iterdir()) == []


def test_destination_not_writable(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    compile_fails(["zoo:llama-tiny", "--format", "int4", "-o", str(blocker / "out")], capsys,
                  "cannot write")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_driver_checks_output_before_compiling(tmp_path, monkeypatch):
    import os

    from qcompiler import driver

    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # as a non-root user would see it
    with pytest.raises(QCompilerError, match="is not writable"):
        driver.compile("zoo:does-not-matter", format="int4", out=tmp_path / "out")
    assert torch.__version__  # nothing was captured: the bad zoo name was never looked up


def test_truncated_safetensors_data(hf_dir, tmp_path, capsys):
    """A checkpoint cut short after its header (an interrupted download): the header parses, the
    data does not cover it; both the CLI and streaming capture say so in one line."""
    broken = tmp_path / "truncated"
    shutil.copytree(hf_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4096])
    compile_fails([str(broken), "--format", "int4", "-o", str(tmp_path / "out")], capsys,
                  "cannot load the weights in")
    with pytest.raises(QCompilerError, match="model.safetensors is not a valid safetensors file"):
        qcompiler.compile(broken, format="int4", out=tmp_path / "out", stream=True, quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truncated"]


def test_nan_weights_when_streaming(hf_dir, tmp_path):
    """Streaming reads each weight from the shard inside lower-datatype: the NaN check still
    runs there, and nothing is left behind."""
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "nan"
    shutil.copytree(hf_dir, bad)
    tensors = load_file(bad / "model.safetensors")
    tensors["model.layers.1.self_attn.o_proj.weight"][3, 5] = float("inf")
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(QCompilerError, match="the weight of model.layers.1.self_attn.o_proj "
                                             "has 1 NaN/Inf"):
        qcompiler.compile(bad, format="int4", out=tmp_path / "out", stream=True, quiet=True,
                          reproducer_dir=tmp_path / "repro")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into read-only directories")
def test_read_only_directory(tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        compile_fails(["zoo:llama-tiny", "--format", "int4", "-o", str(parent / "out")], capsys,
                      "cannot write")
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


def test_disk_full_while_writing(tmp_path, capsys, monkeypatch):
    """The disk fills up (or the directory becomes unwritable) half-way through the artifact:
    one line naming OUT and the OS reason, exit 1, and neither OUT nor the temporary directory
    is left behind."""
    import errno

    from qcompiler import artifact

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(artifact, "save_program", full)  # after weights.safetensors is written
    out = tmp_path / "out"
    compile_fails(["zoo:llama-tiny", "--format", "int4", "-o", str(out)], capsys,
                  f"cannot write {out}: No space left on device")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, fragment", [
    (["--format", "razer4", "-g", "0"], "group size must be a positive number"),
    (["--format", "int4", "-g", "-32"], "group size must be a positive number"),
    (["--format", "nvfp4", "-g", "48"], "does not support group size 48 (allowed: 16)"),
    (["--pipeline", "gptq{format=int5},lower-datatype{format=int4}"], "unknown format 'int5'"),
])
def test_bad_format_options_fail_before_capture(argv, fragment, tmp_path, capsys, monkeypatch):
    """Exit 2 (usage) and no capture at all: the model path does not even need to exist."""
    import qcompiler.driver as driver

    monkeypatch.setattr(driver, "capture_model", lambda *a, **k: pytest.fail("captured"))
    code = qcompile.main([str(tmp_path / "no-such-model"), *argv, "-o", str(tmp_path / "out")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and fragment in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_a_user_error_leaves_no_reproducer_in_tmp(tmp_path, capsys, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code = qcompile.main(["zoo:llama-tiny", "--pipeline", "pot-refine{format=razer4}",
                          "--emit", "ir"])
    err = capsys.readouterr().err
    assert code == 1 and "qc-repro-" not in err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("qc-repro-")]


def test_on_indivisible_pad_from_the_command_line(tmp_path, capsys):
    """stories260k's K = 172 is not a multiple of 32: the error names the flag, the flag pads."""
    code = qcompile.main(["zoo:stories260k", "--format", "int4", "-g", "32", "--emit", "ir"])
    err = capsys.readouterr().err
    assert code == 1 and "--on-indivisible pad" in err
    out = tmp_path / "out"
    assert qcompile.main(["zoo:stories260k", "--format", "int4", "-g", "32",
                          "--on-indivisible", "pad", "-o", str(out), "-q"]) == 0
    layers = {r["name"]: r for r in json.loads((out / "manifest.json").read_text())["layers"]}
    assert layers["model.layers.0.mlp.down_proj"]["format"] == "int4"

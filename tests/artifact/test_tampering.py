"""Artifacts prove their integrity: every tampering case is refused with one line, before the
tampered bytes are used (and, for paths and shapes, before anything is opened or allocated)."""

from __future__ import annotations

import json

import pytest
from tamper import copy_artifact, manifest, rehash, rewrite_weights_header, write_manifest

import qcompiler
from qcompiler.cli import qcompile
from qcompiler.errors import QCompilerError


@pytest.fixture
def art(llama_razer4, tmp_path):
    return copy_artifact(llama_razer4[0], tmp_path / "art")


def refused(out, fragment):
    with pytest.raises(QCompilerError, match=fragment) as info:
        qcompiler.load(out)
    assert "\n" not in str(info.value)


def a_weight(out):
    return next(n for n, e in manifest(out)["tensors"].items() if e["dtype"] == "U8")


def test_untouched_copy_loads(art):
    assert qcompiler.load(art).manifest["format"] == "razer4"


def test_flipped_weight_byte(art):
    raw = bytearray((art / "weights.safetensors").read_bytes())
    raw[-3] ^= 0xFF
    (art / "weights.safetensors").write_bytes(bytes(raw))
    refused(art, "weights.safetensors does not match its hash")


def test_deleted_file(art):
    (art / "report.json").unlink()
    refused(art, "report.json is missing")


def test_missing_record(art):
    data = manifest(art)
    del data["files"]
    write_manifest(art, data)
    refused(art, "no integrity record")


def test_partial_record(art):
    data = manifest(art)
    del data["files"]["weights.safetensors"]
    write_manifest(art, data)
    refused(art, "does not cover weights.safetensors")


def test_unrecorded_file(art):
    (art / "kernels" / "extra.py").write_text("import os\n")
    refused(art, "kernels/extra.py is not in the integrity record")


@pytest.mark.parametrize("name", ["../../../../etc/hostname", "/etc/hostname",
                                  "kernels/../../x", "a\\b"])
def test_path_escape_is_refused_before_opening(art, name, monkeypatch):
    data = manifest(art)
    data["files"][name] = "sha256:" + "0" * 64
    write_manifest(art, data)
    opened = []
    import qcompiler.artifact as artifact_module

    monkeypatch.setattr(artifact_module, "sha256_file", lambda p: opened.append(p) or "x")
    refused(art, "leaves the artifact|invalid file name")
    assert opened == []


def test_symlinked_member(art, tmp_path):
    outside = tmp_path / "secret"
    outside.write_text("s")
    (art / "report.json").unlink()
    (art / "report.json").symlink_to(outside)
    refused(art, "symbolic link")


def test_rehashed_wrong_shape(art):
    name = a_weight(art)
    shape = manifest(art)["tensors"][name]["shape"]
    rewrite_weights_header(art, name, shape=[shape[1], shape[0]] if shape[0] != shape[1]
                           else [shape[0] * 2, shape[1] // 2])
    rehash(art)
    refused(art, f"tensor {name}: manifest.json says")


def test_rehashed_wrong_dtype(art):
    name = a_weight(art)
    rewrite_weights_header(art, name, dtype="I8")
    rehash(art)
    refused(art, f"tensor {name}: manifest.json says")


def test_rehashed_consistent_lie_is_caught_by_the_program(art):
    """Header and manifest table both changed to the same wrong dtype: the program's own
    tensor types still disagree."""
    name = a_weight(art)
    rewrite_weights_header(art, name, dtype="I8")
    data = manifest(art)
    data["tensors"][name]["dtype"] = "I8"
    write_manifest(art, data)
    rehash(art)
    refused(art, f"program.pt2 expects {name}")


def test_huge_shape_is_refused_before_allocation(art):
    name = a_weight(art)
    rewrite_weights_header(art, name, shape=[1 << 30, 1 << 30])
    data = manifest(art)
    data["tensors"][name]["shape"] = [1 << 30, 1 << 30]
    write_manifest(art, data)
    rehash(art)
    refused(art, "needs 1152921504606846976 bytes")


def test_missing_tensor_table(art):
    data = manifest(art)
    del data["tensors"]
    write_manifest(art, data)
    refused(art, "no tensor table")


def test_manifest_not_an_object(art):
    (art / "manifest.json").write_text(json.dumps([1, 2]))
    refused(art, "not a JSON object")


def test_force_never_deletes_a_user_directory(llama_razer4, tmp_path, capsys):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "thesis.txt").write_text("four years")
    code = qcompile.main(["zoo:llama-tiny", "--format", "int4", "-o", str(mine), "--force"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "is not a qcompiler artifact" in err[0]
    assert (mine / "thesis.txt").read_text() == "four years"
    file_out = tmp_path / "notes.txt"
    file_out.write_text("keep")
    assert qcompile.main(["zoo:llama-tiny", "--format", "int4", "-o", str(file_out),
                          "--force"]) == 1
    assert file_out.read_text() == "keep"


def test_edited_kernel_is_refused_even_when_rehashed(art):
    """Kernel files are Python that the CUDA runtime would import: a rehashed edit (what the
    author of a hostile artifact would ship) is still refused, on any device."""
    kernel = next(p for p in (art / "kernels").glob("*.py"))
    kernel.write_text(kernel.read_text() + "\nimport os  # payload\n")
    rehash(art)
    refused(art, f"kernels/{kernel.name} differs from what this qcompiler generates")


def test_extra_kernel_is_refused_even_when_recorded(art):
    (art / "kernels" / "qc_extra.py").write_text("import os\n")
    data = manifest(art)
    data["files"]["kernels/qc_extra.py"] = ""
    write_manifest(art, data)
    rehash(art)
    refused(art, "kernels/qc_extra.py is not what this qcompiler generates")


def test_tuned_configs_saved_into_an_artifact_are_recorded(art):
    from qcompiler.codegen import runtime as kernel_runtime

    kernel_runtime.save_tuned_configs(art / "kernels")
    assert "kernels/autotune.json" in manifest(art)["files"]
    assert qcompiler.load(art).manifest["format"] == "razer4"

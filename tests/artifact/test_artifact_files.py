"""The artifact directory: its files, determinism, and atomic writing."""

from __future__ import annotations

import json

import pytest

import qcompiler
from qcompiler import artifact
from qcompiler.errors import QCompilerError

DETERMINISTIC = ("program.pt2", "weights.safetensors", "report.json")


def test_layout_and_manifest(llama_razer4):
    out, result = llama_razer4
    names = sorted(p.name for p in out.iterdir())
    assert {"manifest.json", "program.pt2", "weights.safetensors", "report.json"} <= set(names)
    manifest = artifact.read_manifest(out)
    assert manifest["format"] == "razer4"
    assert manifest["pipeline"] == "canonicalize,dce,lower-datatype{format=razer4},dce"
    assert set(manifest["versions"]) >= {"qcompiler", "torch", "safetensors"}
    layers = {row["name"]: row for row in manifest["layers"]}
    assert layers["model.layers.0.mlp.down_proj"] == {
        "name": "model.layers.0.mlp.down_proj", "format": "razer4", "group_size": 128,
        "n": 128, "k": 256, "bits_per_weight": 4.140625}
    assert layers["lm_head"]["format"] == "fp"
    assert manifest["summary"]["layers_quantized"] == 14
    for name, digest in manifest["files"].items():
        assert digest == "sha256:" + artifact.sha256_file(out / name)
    assert "build" not in manifest and manifest["build_file"] == "build.json"
    build = artifact.read_build(out)
    assert build["peak_rss_mb"] > 0 and build["compile_seconds"] > 0
    assert [p for p, _ in build["pass_seconds"]][:2] == ["canonicalize", "dce"]
    assert "build.json" not in manifest["files"]  # not hashed: it differs between runs
    report = json.loads((out / "report.json").read_text())
    errors = [e["rel_error"] for e in report["layers"] if e["status"] == "quantized"]
    assert len(errors) == 14 and all(0 < e < 0.05 for e in errors)
    assert all("seconds" not in p for p in report["passes"])  # wall times live in the manifest


def test_kernels_are_emitted_when_codegen_is_present(llama_razer4):
    out, _ = llama_razer4
    kernels = artifact.read_manifest(out)["kernels"]
    try:
        import qcompiler.codegen.emit  # noqa: F401
    except ImportError:
        assert kernels["status"].startswith("not emitted") and not (out / "kernels").exists()
        return
    assert kernels["status"] == "emitted"
    files = sorted(p.name for p in (out / "kernels").iterdir())
    assert files == sorted(kernels["files"]) and any(f.endswith(".py") for f in files)


def test_tensors_are_stored_once(llama_razer4):
    out, _ = llama_razer4
    # program.pt2 holds one-element stubs: much smaller than the weights it refers to.
    assert (out / "program.pt2").stat().st_size < (out / "weights.safetensors").stat().st_size


def test_same_input_gives_byte_identical_files(llama_razer4, tmp_path):
    """Every file, manifest included, is byte-identical across two compiles; only build.json
    (date, wall times, peak RSS) may differ."""
    first, _ = llama_razer4
    second = tmp_path / "again"
    qcompiler.compile("zoo:llama-tiny", format="razer4", out=second, quiet=True)

    def files(directory):
        return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                      if p.is_file())

    names = files(first)
    assert names == files(second)
    assert set(DETERMINISTIC) | {"manifest.json", "build.json"} <= set(names)
    for name in names:
        if name != "build.json":
            assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_existing_out_needs_force(llama_razer4, tmp_path):
    _, result = llama_razer4
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(QCompilerError, match="already exists; choose another -o or pass --force"):
        qcompiler.compile(result.program, pipeline="dce", out=out, quiet=True)
    assert (out / "keep.txt").read_text() == "mine"
    # --force never deletes a directory that is not an artifact: the user's file survives
    with pytest.raises(QCompilerError, match="is not a qcompiler artifact"):
        qcompiler.compile(result.program, pipeline="dce", out=out, force=True, quiet=True)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()  # an empty directory may be replaced
    qcompiler.compile(result.program, pipeline="dce", out=out, force=True, quiet=True)
    (out / "stale.txt").write_text("old")  # an artifact may be replaced, whole
    qcompiler.compile(result.program, pipeline="dce", out=out, force=True, quiet=True)
    assert not (out / "stale.txt").exists() and (out / "manifest.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary directories left


def test_failed_write_leaves_nothing(llama_razer4, tmp_path, monkeypatch):
    _, result = llama_razer4

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(artifact, "save_program", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        artifact.write_artifact(result.program, tmp_path / "out", pipeline="p", format="razer4",
                                report={})
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destination(llama_razer4, tmp_path):
    _, result = llama_razer4
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(QCompilerError, match="cannot write .*file/out"):
        qcompiler.compile(result.program, pipeline="dce", out=blocker / "out", quiet=True)
    with pytest.raises(QCompilerError, match="cannot write"):
        artifact.write_artifact(result.program, blocker / "out", pipeline="p", format="f",
                                report={})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_read_manifest_errors(tmp_path):
    with pytest.raises(QCompilerError, match="no such artifact"):
        artifact.read_manifest(tmp_path / "missing")
    with pytest.raises(QCompilerError, match="is not a qcompiler artifact"):
        artifact.read_manifest(tmp_path)

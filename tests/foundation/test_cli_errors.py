"""Every user mistake on the command line: one `error:` line, the right exit code, no output."""

from __future__ import annotations

import os

import pytest
import torch

from qcompiler import zoo
from qcompiler.cli import qc_opt, qcompile


def run(main, argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_missing_file(tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(qcompile.main, [str(tmp_path / "nope"), "--format", "int4",
                                            "-o", str(out)], capsys)
    assert code == 1 and stdout == "" and not out.exists()
    assert_one_line_error(err, "no such file or directory")


def test_unreadable_file(tmp_path, capsys):
    path = tmp_path / "model.pt2"
    path.write_bytes(b"PK")
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything: nothing to test
        pytest.skip("running as root")
    code, _, err = run(qcompile.main, [str(path), "--format", "int4"], capsys)
    assert code == 1
    assert_one_line_error(err, "permission denied")


def test_not_a_model(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("just text")
    out = tmp_path / "out"
    code, _, err = run(qcompile.main, [str(path), "--format", "int4", "-o", str(out)], capsys)
    assert code == 1 and not out.exists()
    assert_one_line_error(err, "is not a model")


def test_unknown_format(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(qcompile.main, ["zoo:llama-tiny", "--format", "razer5", "-o", str(out)],
                       capsys)
    assert code == 2 and not out.exists()
    assert_one_line_error(err, "unknown format 'razer5'", "razer4")


def test_pickle_without_trust(tmp_path, capsys):
    path = tmp_path / "model.pt"
    torch.save(zoo.build_module("gpt2-tiny"), path)
    code, _, err = run(qc_opt.main, [str(path), "-p", "canonicalize"], capsys)
    assert code == 1
    assert_one_line_error(err, "--trust-pickle")


def test_unknown_pass_names_nearest(capsys):
    code, _, err = run(qc_opt.main, ["zoo:llama-tiny", "-p", "canonicalise"], capsys)
    assert code == 2
    assert_one_line_error(err, "unknown pass 'canonicalise'", "canonicalize")


def test_missing_format_is_usage_error(capsys):
    code, _, err = run(qcompile.main, ["zoo:llama-tiny"], capsys)
    assert code == 2
    assert_one_line_error(err, "--format")


def test_bad_flag_is_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        qcompile.main(["zoo:llama-tiny", "--formta", "int4"])
    assert info.value.code == 2
    assert_one_line_error(capsys.readouterr().err, "unrecognized arguments")


def test_existing_output_needs_force(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run(qcompile.main, ["zoo:llama-tiny", "--format", "int4", "-o", str(out)],
                       capsys)
    assert code == 1 and (out / "keep.txt").read_text() == "mine"
    assert_one_line_error(err, "already exists", "--force")


def test_print_pipeline(capsys):
    code, stdout, _ = run(qcompile.main, ["zoo:llama-tiny", "--format", "razer4",
                                          "--print-pipeline"], capsys)
    assert code == 0 and "razer4" in stdout and stdout.count("\n") == 1

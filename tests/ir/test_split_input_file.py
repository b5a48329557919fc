"""`qc-opt --split-input-file`: cases separated by `// -----` run independently in one process,
errors keep the whole file's line numbers, and the exit code is the worst case's."""

from __future__ import annotations

from qcompiler.cli import qc_opt
from qcompiler.cli.qc_opt_split import split_cases

CASE = """// dims: x.0=batch:1..8
qc.func @main(%x: tensor<?x4xf32>) -> tensor<?x2xf32> {
  %w = qc.param "fc.weight" : tensor<2x4xf32> {random = 0}
  %y = aten.linear(%x, %w) : tensor<?x2xf32>
  qc.return %y : tensor<?x2xf32>
}
"""
BROKEN = """qc.func @main(%x: tensor<?x4xf32>) -> tensor<?x2xf32> {
  qc.return %nope : tensor<?x2xf32>
}
"""


def test_split_cases_keep_file_line_numbers():
    text = "a\n// -----\nb\nc\n  // -----  \nd\n"
    cases = split_cases(text)
    assert cases == ["a\n", "\n\nb\nc\n", "\n" * 5 + "d\n"]
    assert [c.splitlines()[-1] for c in cases] == ["a", "c", "d"]
    assert split_cases("only\n") == ["only\n"]


def test_each_case_runs_and_a_failing_case_does_not_stop_the_next(tmp_path, capsys):
    path = tmp_path / "cases.qcir"
    path.write_text(CASE + "// -----\n" + BROKEN + "// -----\n" + CASE)
    rc = qc_opt.main([str(path), "--split-input-file", "-p", "quantize-report"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert out.count("// linear fc: N=2 K=4 bias=false dtype=f32") == 2  # cases 1 and 3 ran
    assert out.count("// -----\n") == 2
    line = len(CASE.splitlines()) + 3  # `qc.return %nope` in the whole file
    assert err.strip().splitlines() == [
        f"error: {path}:{line}:13: use of undefined value %nope"]


def test_split_input_file_needs_a_qcir_file_and_stdout(tmp_path, capsys):
    assert qc_opt.main(["zoo:llama-tiny", "--split-input-file"]) == 2
    path = tmp_path / "a.qcir"
    path.write_text(CASE)
    assert qc_opt.main([str(path), "--split-input-file", "-o", str(tmp_path / "b.qcir")]) == 2
    err = capsys.readouterr().err
    assert "error: --split-input-file needs a FILE.qcir, got zoo:llama-tiny" in err
    assert "error: --split-input-file prints every case to stdout; leave out -o" in err


def test_a_missing_qcir_file_is_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.qcir"
    assert qc_opt.main([str(missing)]) == 1
    assert qc_opt.main([str(missing), "--split-input-file"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith(f"error: cannot read {missing}") for line in err)

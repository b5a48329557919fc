"""The pass manager: IR dumps, timing, statistics, verification and reproducers."""

from __future__ import annotations

import io
import re
import tempfile

import pytest
import torch
from pm_helpers import BreakGraph, Crash, Fail, Touch, two_linears

from qcompiler.errors import UsageError
from qcompiler.pass_manager import PassFailure, PassManager, run_pipeline
from qcompiler.passes_base import PassContext
from qcompiler.pipeline import parse_pipeline

DCE = parse_pipeline("dce")[0]


def run(passes, **options):
    stream = io.StringIO()
    program = PassManager(passes, stream=stream, **options).run(two_linears())
    return program, stream.getvalue()


def headers(text: str) -> list[str]:
    return re.findall(r"^// -----// IR Dump .* //----- //$", text, flags=re.M)


def test_print_ir_after_all_uses_mlir_headers():
    _, err = run([Touch(), DCE], print_ir_after_all=True)
    assert headers(err) == ["// -----// IR Dump After test-touch //----- //",
                            "// -----// IR Dump After dce //----- //"]
    after_touch = err.split("//----- //\n")[1]
    assert "qc.func @main" in after_touch and "aten.relu" in after_touch


def test_print_ir_before_and_after_named_passes():
    _, err = run([Touch(), DCE], print_ir_before={"dce"}, print_ir_after={"test-touch"})
    assert headers(err) == ["// -----// IR Dump After test-touch //----- //",
                            "// -----// IR Dump Before dce //----- //"]
    _, err = run([Touch(), DCE], print_ir_before_all=True)
    assert headers(err) == ["// -----// IR Dump Before test-touch //----- //",
                            "// -----// IR Dump Before dce //----- //"]


def test_print_ir_after_change_skips_passes_that_change_nothing():
    _, err = run([Touch(), DCE], print_ir_after_change=True)
    assert headers(err) == ["// -----// IR Dump After test-touch //----- //"]


def test_print_ir_for_an_unknown_pass_is_a_usage_error():
    with pytest.raises(UsageError, match=r"^unknown pass 'dcee'; did you mean 'dce'\?$"):
        PassManager([DCE], print_ir_after={"dcee"})


def test_no_output_unless_asked():
    _, err = run([Touch(), DCE])
    assert err == ""


def test_timing_table():
    _, err = run([Touch(), DCE], timing=True)
    lines = err.splitlines()
    assert lines[0] == lines[2] == "===" + "-" * 73 + "==="
    assert "... Execution time report ..." in lines[1]
    assert re.search(r"Total Execution Time: \d+\.\d{4} seconds", err)
    for name in ("test-touch", "dce", r"\(A\) verifier", "Total"):
        assert re.search(rf"^  +\d+\.\d{{4}} \( *\d+\.\d%\)  {name}$", err, flags=re.M), name
    assert "(100.0%)  Total" in err


def test_pass_statistics():
    _, err = run([Touch(), DCE], statistics=True)
    assert "... Pass statistics report ..." in err
    assert "test-touch\n  (S) 1 relus-added\ndce\n  (S) 0 nodes-removed\n" in err


def test_report_records_every_pass():
    ctx = PassContext()
    PassManager([Touch(), DCE], stream=io.StringIO()).run(two_linears(), ctx)
    assert [r["pass"] for r in ctx.report["passes"]] == ["test-touch", "dce"]
    assert ctx.report["passes"][0]["stats"] == {"relus-added": 1}


def test_verify_catches_a_broken_graph(tmp_path):
    with pytest.raises(PassFailure) as e:
        run([Touch(), BreakGraph(), DCE], reproducer_dir=tmp_path)
    message = str(e.value)
    assert message.startswith("verify failed after test-break: %")
    assert "refers to missing tensor 'no.such.tensor'" in message
    assert "(pass test-break failed after test-touch;" in message
    # without verification the broken graph goes on and fails later, elsewhere
    with pytest.raises(Exception) as later:
        run([BreakGraph(), DCE], verify_each=False, reproducer_dir=tmp_path)
    assert "verify failed" not in str(later.value)


def test_failure_writes_a_reproducer_and_prints_the_replay_command(tmp_path, monkeypatch):
    from qcompiler import pass_registry

    monkeypatch.setitem(pass_registry._REGISTRY, "test-fail", Fail)
    monkeypatch.setitem(pass_registry._REGISTRY, "test-touch", Touch)
    passes = parse_pipeline("test-touch,dce,test-fail{reason=bad group},dce")
    stream = io.StringIO()
    pm = PassManager(passes, reproducer_dir=tmp_path / "repro", stream=stream,
                     print_ir_after_failure=True)
    with pytest.raises(PassFailure) as e:
        pm.run(two_linears())
    repro = tmp_path / "repro"
    command = f"qc-opt {repro}/repro.qcir -p 'test-fail{{reason=bad group}},dce'"
    assert str(e.value) == (
        "test-fail: bad group; use a smaller group size "
        f"(pass test-fail failed after test-touch,dce; replay with: {command})")
    assert e.value.exit_code == 1 and not e.value.internal
    assert e.value.passes_run == ["test-touch", "dce"] and e.value.command == command
    assert (repro / "pipeline.txt").read_text() == "test-fail{reason=bad group},dce\n"
    ir = (repro / "repro.qcir").read_text()
    assert ir.startswith("// reproducer: the IR before test-fail\n") and "aten.relu" in ir
    assert "// -----// IR Dump After test-fail Failed //----- //" in stream.getvalue()

    # the command replays the failure: parse repro.qcir (+ its tensors), run pipeline.txt
    from qcompiler.ir.io import read_ir

    replayed = read_ir(repro / "repro.qcir")
    assert "aten.relu" in "\n".join(str(n.target) for n in replayed.graph.nodes)
    with pytest.raises(PassFailure, match="test-fail: bad group"):
        run_pipeline(replayed, (repro / "pipeline.txt").read_text().strip(),
                     reproducer_dir=tmp_path / "again", stream=io.StringIO())


def test_a_crashing_pass_is_reported_as_an_internal_error(tmp_path):
    with pytest.raises(PassFailure) as e:
        run([Crash()], reproducer_dir=tmp_path)
    assert str(e.value).startswith(
        "test-crash: internal error: KeyError: 'missing-thing' "
        "(pass test-crash failed as the first pass; replay with: qc-opt ")
    assert e.value.internal and isinstance(e.value.__cause__, KeyError)


def test_a_user_error_leaves_no_reproducer_unless_asked(tmp_path, monkeypatch):
    """A failing pass over a user mistake writes nothing to /tmp (each reproducer holds the
    weights); the message says how to ask for one."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(PassFailure) as e:
        run([Fail()])
    assert e.value.reproducer_dir is None and list(tmp_path.iterdir()) == []
    assert str(e.value).endswith("save a reproducer with --reproducer-dir DIR)")


def test_a_compiler_bug_keeps_its_reproducer_in_a_temp_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(PassFailure) as e:
        run([Crash()])
    directory = e.value.reproducer_dir
    assert directory is not None and directory.parent == tmp_path
    assert "qc-repro-" in directory.name and (directory / "repro.qcir").is_file()
    assert (directory / "repro.safetensors").is_file()
    assert str(directory) in str(e.value)


def test_dump_dir_gets_one_file_per_pass(tmp_path):
    run([Touch(), DCE], dump_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "00-input.qcir", "01-test-touch.qcir", "02-dce.qcir"]


def test_program_still_runs_after_the_pipeline():
    program, _ = run([Touch(), DCE])
    assert torch.all(program.run() >= 0)

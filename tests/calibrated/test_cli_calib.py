"""--calib and friends on qcompile and qc-opt: errors are one line with the right exit code."""

from __future__ import annotations

import pytest

from qcompiler.cli import qc_opt, qcompile


@pytest.mark.parametrize("main", [qcompile.main, qc_opt.main])
def test_missing_calib_file_is_one_line_exit_1(main, tmp_path, capsys):
    missing = tmp_path / "nope.txt"
    argv = ["zoo:llama-tiny", "-p", "gptq{format=int4}", "--calib", str(missing)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: calibration file {missing} does not exist; give --calib a text file "
                   "(or leave it out to sample from the model)"]


def test_empty_calib_file(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert qc_opt.main(["zoo:llama-tiny", "-p", "canonicalize", "--calib", str(empty)]) == 1
    expected = f"error: calibration file {empty} is empty; give it some text"
    assert capsys.readouterr().err.strip() == expected


def test_bad_calib_numbers_are_usage_errors(capsys):
    assert qc_opt.main(["zoo:llama-tiny", "-p", "canonicalize", "--calib-samples", "0"]) == 2
    assert "use --calib-samples N with N >= 1" in capsys.readouterr().err
    assert qcompile.main(["zoo:llama-tiny", "-f", "int4", "--calib-seqlen", "1"]) == 2
    assert "--calib-seqlen L with L >= 2" in capsys.readouterr().err


def test_calib_without_tokenizer(tmp_path, capsys):
    text = tmp_path / "calib.txt"
    text.write_text("once upon a time\n")
    argv = ["zoo:stories260k", "-p", "clip{format=int4,group-size=16,objective=output-mse}",
            "--calib", str(text), "--reproducer-dir", str(tmp_path / "r")]
    assert qc_opt.main(argv) == 1
    err = capsys.readouterr().err
    assert "--calib needs the model's tokenizer and this model has none" in err


def test_driver_takes_calibration():
    import torch

    from qcompiler.calibration import CalibrationConfig
    from qcompiler.driver import compile

    cfg = CalibrationConfig(batches=[torch.tensor([[1, 4, 9, 16, 25, 36, 49, 64]])])
    result = compile("zoo:llama-tiny", pipeline="canonicalize,gptq{format=int4,skip=lm_head,"
                     "*embed*,*mlp*,layers.1.*},lower-datatype{format=int4},dce", quiet=True,
                     calibration=cfg)
    planned = [e for e in result.report["layers"] if e.get("planned_by") == "gptq"]
    assert len(planned) == 4  # layer 0's q/k/v/o

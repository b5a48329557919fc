"""The format report: table structure and sane numbers on a tiny synthetic run."""

from __future__ import annotations

import re

import pytest

from qcompiler.cli import list_cmd
from qcompiler.formats import report


def test_report_synthetic_subset(tmp_path, capsys):
    out, png = tmp_path / "f.md", tmp_path / "f.png"
    argv = ["--formats", "int8,int4", "--group-sizes", "128", "--no-minilm",
            "--out", str(out), "--plot", str(png)]
    assert report.main(argv) == 0
    text = out.read_text()
    assert text.splitlines()[2] == ("Command: `python -m qcompiler.formats.report "
                                    + " ".join(argv) + "`")
    assert re.search(r"^Date: \d{4}-\d\d-\d\d \d\d:\d\d UTC", text, re.M)
    assert re.search(r"^Machine: .*\d+ CPUs", text, re.M) and "torch " in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0] == ("| format | group | bits/weight | Gaussian rel. error "
                        "| Student-t(4) rel. error |")
    rows = {cells[0]: cells for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in table[1:])}
    assert set(rows) == {"int8", "int4"}
    assert rows["int4"][1:3] == ["128", "4.1875"] and rows["int8"][2] == "8.2500"
    int4, int8 = (float(rows[n][3]) for n in ("int4", "int8"))
    assert 1e-3 < int4 < 3e-2  # 4-bit RTN-ish on a Gaussian: about 1 %
    assert int8 < int4 / 50
    assert float(rows["int4"][4]) > int4  # heavy tails cost a uniform grid more
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_flag_runs_the_report(capsys):
    assert list_cmd.main(["formats", "--report", "--formats", "fp4", "--group-sizes", "64",
                          "--no-minilm"]) == 0
    text = capsys.readouterr().out
    assert "Command: `qcompile formats --report --formats fp4" in text
    assert re.search(r"^\| fp4 \| 64 \| 4\.2500 \| ", text, re.M)


def test_bad_format_is_a_usage_error(capsys):
    assert report.main(["--formats", "fp5", "--no-minilm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --formats: unknown format 'fp5'") and "fp4" in err


def test_group_size_no_format_allows(capsys):
    assert report.main(["--formats", "fp4", "--group-sizes", "48", "--no-minilm"]) == 2
    assert "no format allows the group sizes 48" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["gaussian", "student-t"])
def test_synthetic_weights_are_seeded(kind):
    a, b = report.synthetic(kind, (8, 32)), report.synthetic(kind, (8, 32))
    assert (a[0] == b[0]).all()


def test_format_options_measure_a_variant_beside_the_format(capsys):
    """`fp4/scale=pow2` rows: power-of-two scales cost error on Gaussian weights (measured
    +32% at g64), and the row is the format's own quantize with that option."""
    import torch

    from qcompiler import formats

    assert report.main(["--formats", "fp4,fp4/scale=pow2", "--group-sizes", "64",
                        "--no-minilm"]) == 0
    rows = {cells[0]: cells for cells in
            ([c.strip() for c in line.strip("|").split("|")]
             for line in capsys.readouterr().out.splitlines() if line.startswith("| fp4"))}
    plain, pow2 = float(rows["fp4"][3]), float(rows["fp4/scale=pow2"][3])
    assert rows["fp4/scale=pow2"][2] == rows["fp4"][2] == "4.2500"  # scales stay fp16
    assert 1.05 * plain < pow2 < 2 * plain
    w = report.synthetic("gaussian")[0]
    fmt = formats.get("fp4")
    again = report.relative_error(fmt, [w], 64, {"scale": "pow2"})
    assert f"{again:.4e}" == rows["fp4/scale=pow2"][3]
    q = fmt.quantize(w[:4], 64, scale="pow2")
    assert torch.equal(torch.log2(q.scales.float()), torch.log2(q.scales.float()).round())


@pytest.mark.parametrize("entry, message", [
    ("fp4/scale", "'fp4/scale': options are written NAME/KEY=VALUE"),
    ("int4/scale=pow2", "format 'int4' has no option 'scale'"),
    ("fp4/scale=pow3", "option scale='pow3' is not one of fp16, pow2, pow2-row"),
])
def test_bad_format_option_is_a_usage_error(capsys, entry, message):
    assert report.main(["--formats", entry, "--no-minilm"]) == 2
    assert message in capsys.readouterr().err

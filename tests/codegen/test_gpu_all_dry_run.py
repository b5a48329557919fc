"""bench/gpu_all.py (issue 11 item 6): the dry run on the CPU, its rows, and the shipped configs.

The dry run takes every code path of the GPU run up to the first CUDA call (argument parsing,
kernel emission and interpreter launches, the correctness checks, row writing, building a small
Llama-3-shaped model, capture, lowering and generate) on small shapes; it runs in-process here
(TRITON_INTERPRET is already set by conftest.py).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

from qcompiler.codegen import tuned
from qcompiler.codegen.specialize import (DeviceLimits, KernelConfig, default_config, kind_for,
                                          prune)

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _gpu_all():
    sys.path.insert(0, str(BENCH))
    return importlib.import_module("gpu_all")


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "out"
    assert _gpu_all().main([str(out), "--dry-run"]) == 0
    rows = _rows(out)
    checks = [r for r in rows if r["section"] == "correctness" and "note" not in r]
    assert len(checks) == 7 and all(r["ok"] for r in checks), checks
    assert {r["kernel"] for r in checks} >= {"gemv16 (fp16x2, M=1 default)",
                                             "gemv fp32 (QC_GEMV=fp32)", "gemv split-K 4 + bias",
                                             "gemm16 split-K 2 + bias"}
    kernels = [r for r in rows if r["section"] == "kernels" and "note" not in r]
    assert {(r["m"], r["kernel"]) for r in kernels} == {(1, "gemv16"), (16, "gemm16")}
    assert all(r["us"] > 0 and r["fp16_us"] > 0 for r in kernels)
    decode = [r for r in rows if r["section"] == "decode" and "note" not in r]
    assert {(r["run"], r["batch"]) for r in decode} == {
        ("HF fp16 eager generate", 1), ("HF fp16 eager generate", 2),
        ("qcompiler razer4 generate", 1), ("qcompiler razer4 generate", 2)}
    md = (out / "results.md").read_text()
    for text in ("- command: `", "- date: ", "- versions: Python", "torch ", "triton ",
                 "| razer4 | gemv16 (fp16x2, M=1 default) | 1 | 40x256 |", "## Decode"):
        assert text in md, text


def test_dry_run_checks_nf4_through_gemm16(tmp_path):
    """nf4 is in the GPU run's formats and its M = 16 / 256 checks and timings go through the
    tensor-core GEMM (gemm16), as the launcher picks it for fp16 activations."""
    assert "nf4" in _gpu_all().FORMATS
    out = tmp_path / "out"
    assert _gpu_all().main([str(out), "--dry-run", "--formats", "nf4",
                            "--sections", "correctness,kernels"]) == 0
    rows = _rows(out)
    checks = [r for r in rows if r["section"] == "correctness" and "note" not in r]
    assert all(r["ok"] and r["format"] == "nf4" for r in checks), checks
    assert {(r["kernel"], r["m"]) for r in checks} >= {("gemm16", 16), ("gemm16", 20),
                                                       ("gemm16 split-K 2 + bias", 16)}
    kernels = [r for r in rows if r["section"] == "kernels" and "note" not in r]
    assert {(r["m"], r["kernel"]) for r in kernels} == {(1, "gemv16"), (16, "gemm16")}


def test_rows_are_written_as_they_come(tmp_path):
    _gpu_all()  # puts bench/ on sys.path
    from gpu_report import Report

    report = Report(tmp_path, ["# head"])
    assert (tmp_path / "results.md").read_text() == "# head\n"
    report.add("kernels", {"format": "int4", "shape": "4096x4096", "m": 1, "us": 12.5})
    assert "| int4 | 4096x4096 | 1 |  | 12.5 |" in (tmp_path / "results.md").read_text()
    assert len(_rows(tmp_path)) == 1


def test_tune_dry_run_writes_a_resumable_file(tmp_path):
    assert _gpu_all().main([str(tmp_path), "--dry-run", "--tune", "--formats", "int4"]) == 0
    data = json.loads((tmp_path / "interpreter.json").read_text())
    entries = data["gpus"]["interpreter"]
    assert len(entries) == len(tuned.LLAMA3_8B_SHAPES) * len(tuned.BUCKETS) * len(tuned.FORMATS)
    assert all(not e["tuned"] for e in entries.values())  # the interpreter cannot time


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_usage_errors(tmp_path, capsys):
    gpu_all = _gpu_all()
    assert gpu_all.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: bench/gpu_all.py needs a CUDA GPU and none is visible; run with --dry-run to "
        "check it on the CPU")
    assert gpu_all.main([str(tmp_path), "--dry-run", "--formats", "int5"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_shipped_files_are_current_and_valid():
    """The shipped (untuned) files are what write-defaults produces today: a change to
    default_config must regenerate them (`python -m qcompiler.codegen.tuned write-defaults`)."""
    for match, name in tuned.GPUS.items():
        data = json.loads((tuned.DIR / name).read_text())
        if data["tuned"]:
            continue
        limits = DeviceLimits(name=match, num_sms=132, smem_bytes=227 * 1024)
        assert (tuned.DIR / name).read_text() == tuned.dumps(tuned.default_file(match, limits)), \
            f"{name} is stale: run python -m qcompiler.codegen.tuned write-defaults"
        for spec in tuned.shipped_specs():
            for bucket in tuned.BUCKETS:
                kind = kind_for(bucket)
                entry = data["gpus"][match][spec.tuning_key(kind, bucket)]
                cands = [KernelConfig.from_json(c) for c in entry["candidates"]]
                assert cands[0] == KernelConfig.from_json(entry["config"]) == default_config(
                    spec, kind, bucket, limits)
                assert 1 <= len(cands) <= tuned.CANDIDATES
                assert all(prune(spec, kind, bucket, c, limits) is None for c in cands)


def test_shipped_config_lookup_by_gpu_prefix():
    spec = tuned.shipped_specs()[0]
    key = spec.tuning_key(kind_for(1), 1)
    for gpu in ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H200"):
        assert tuned.shipped_config(gpu, key) is not None
    assert tuned.shipped_config("NVIDIA A10", key) is None
    assert tuned.shipped_config("NVIDIA H200", "nope") is None

"""bench/kernel_speed.py: the no-GPU message, and one tiny shape through the real code path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "kernel_speed.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_without_cuda_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert _bench().main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    want = ("error: bench/kernel_speed.py needs a CUDA GPU and none is visible; run with "
            "--interpret-smoke to check the script on the CPU")
    assert err == [want]


def test_interpret_smoke_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "kernels-smoke.md"
    rc = _bench().main(["--interpret-smoke", "--formats", "razer4", "--m", "1,16",
                        "--e2e", "--out", str(out)])
    assert rc == 0
    text = out.read_text()
    assert "- command: `python bench/kernel_speed.py" in text and "triton" in text
    assert "| razer4 | 96x128 | 1 |" in text and "| razer4 | 96x128 | 16 |" in text
    assert "| fp16 (cuBLAS) |" in text and "| razer4 |" in text.split("## Batch-1 decode")[1]
    assert "WRONG" not in text


def test_bad_format_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert _bench().main(["--interpret-smoke", "--formats", "razr4"]) == 2
    assert "unknown format 'razr4'" in capsys.readouterr().err

"""`--emit mlir` gives torch-dialect MLIR that torch-mlir-opt (from the torch-mlir wheel) parses."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qcompiler import formats, zoo
from qcompiler.capture import capture
from qcompiler.ops import op_name
from qcompiler.pass_manager import PassManager
from qcompiler.passes_base import PassContext
from qcompiler.pipeline import parse_pipeline
from qcompiler.mlir_emit import emit_mlir


def torch_mlir_opt() -> str:
    path = shutil.which("torch-mlir-opt", path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail("torch-mlir-opt is missing from the venv: torch-mlir is a dependency")
    return path


def test_emitted_mlir_parses(tmp_path):
    text = emit_mlir(zoo.load("llama-tiny"))
    assert "func.func @main(%arg0: !torch.vtensor<[?,?],si64>)" in text  # batch is dynamic
    assert text.count("torch.aten.linear") == 15
    path = tmp_path / "model.mlir"
    path.write_text(text)
    subprocess.run([torch_mlir_opt(), str(path), "-o", str(tmp_path / "round.mlir")], check=True)


class TwoLinears(torch.nn.Module):
    """Small enough that every format's MLIR emits in well under a second."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up = torch.nn.Linear(64, 128)
        self.down = torch.nn.Linear(128, 64, bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


WEIGHT_FORMATS = [n for n in formats.names() if formats.get(n).role in ("weight", "both")]


@pytest.mark.parametrize("fmt", WEIGHT_FORMATS)
def test_quantized_program_mlir_parses(fmt, tmp_path):
    """Every weight format lowers to `torch.operator "torch.qc.linear_<fmt>"` that parses."""
    group = 32 if 32 in formats.get(fmt).group_sizes else formats.get(fmt).default_group_size
    program = capture(TwoLinears(), (torch.randn(2, 64),), dynamic_seq=False)
    spec = f"lower-datatype{{format={fmt},group-size={group}}}"
    program = PassManager(parse_pipeline(spec)).run(program, PassContext(quiet=True))
    text = emit_mlir(program)
    assert text.count(f'torch.operator "torch.qc.{op_name(fmt)}"') == 2, text[:2000]
    path = tmp_path / "model.mlir"
    path.write_text(text)
    subprocess.run([torch_mlir_opt(), str(path), "-o", str(tmp_path / "round.mlir")], check=True)

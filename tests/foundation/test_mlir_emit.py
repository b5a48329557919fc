"""`--emit mlir` gives torch-dialect MLIR that torch-mlir-opt (from the torch-mlir wheel) parses."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qcompiler import zoo
from qcompiler.mlir_emit import emit_mlir


def torch_mlir_opt() -> str:
    path = shutil.which("torch-mlir-opt", path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail("torch-mlir-opt is missing from the venv: torch-mlir is a dependency")
    return path


def test_emitted_mlir_parses(tmp_path):
    text = emit_mlir(zoo.load("llama-tiny"))
    assert "func.func @main(%arg0: !torch.vtensor<[1,?],si64>)" in text
    assert text.count("torch.aten.linear") == 15
    path = tmp_path / "model.mlir"
    path.write_text(text)
    subprocess.run([torch_mlir_opt(), str(path), "-o", str(tmp_path / "round.mlir")], check=True)

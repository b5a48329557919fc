"""Emission: names, header, self-containment, determinism, dedup and index.json, errors."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from qcompiler.codegen.emit import INDEX_FILE, emit_all, emit_kernel
from qcompiler.errors import QCompilerError


def test_names_and_file() -> None:
    src = emit_kernel("razer4", 4096, 4096, 128, "model.layers.0.mlp.up_proj")
    assert src.name == "qc_razer4_gemv_n4096_k4096_g128"
    assert src.gemm_name == "qc_razer4_gemm_n4096_k4096_g128"
    assert src.file_name == "qc_razer4_n4096_k4096_g128.py"
    assert emit_kernel("int4-sym", 64, 128, 32, "l").name == "qc_int4_sym_gemv_n64_k128_g32"


def test_header_names_format_shape_group_and_layers() -> None:
    src = emit_kernel("pot4", 11008, 4096, 64, ["model.layers.0.mlp.up_proj",
                                                "model.layers.0.mlp.gate_proj"])
    header = src.source.split('"""')[0]
    assert "# format:     pot4" in header
    assert "# shape:      N=11008 (out features) x K=4096 (in features)" in header
    assert "# group size: 64" in header
    assert "# layers:     model.layers.0.mlp.up_proj\n#             model.layers.0.mlp.gate_proj" \
        in header


@pytest.mark.parametrize("fmt", ["razer4", "int4", "nf4", "nvfp4", "int3", "pot2"])
def test_self_contained_python(fmt: str) -> None:
    """Parses, imports only torch/triton (and os, for QC_GEMV / TRITON_INTERPRET), and inlines
    its helpers (no qcompiler import)."""
    g = {"nvfp4": 16}.get(fmt, 32)
    src = emit_kernel(fmt, 48, 128, g, "l").source
    tree = ast.parse(src)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported == {"os", "torch", "triton", "triton.language"}
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {f"dequant_{fmt}", f"group_params_{fmt}", "linear", "gemv", "gemm"} <= defined
    compile(src, "<emitted>", "exec")


def test_deterministic() -> None:
    a = emit_kernel("razer4", 96, 256, 64, "x").source
    b = emit_kernel("razer4", 96, 256, 64, "x").source
    assert a == b


def test_emit_all_dedups_and_indexes(tmp_path: Path) -> None:
    specs = [
        {"format": "razer4", "N": 64, "K": 128, "group_size": 32, "layer": "a"},
        {"format": "razer4", "n": 64, "k": 128, "group_size": 32, "layer": "b"},
        {"format": "int4", "N": 64, "K": 128, "group_size": 32, "layers": ["c"]},
        {"format": "razer4", "N": 64, "K": 128, "group_size": 32, "opts": "", "layer": "a"},
    ]
    index = emit_all(specs, tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [INDEX_FILE, "qc_int4_n64_k128_g32.py", "qc_razer4_n64_k128_g32.py"]
    assert index["layers"] == {"a": "qc_razer4_n64_k128_g32.py", "b": "qc_razer4_n64_k128_g32.py",
                               "c": "qc_int4_n64_k128_g32.py"}
    assert index["kernels"]["qc_razer4_n64_k128_g32.py"]["layers"] == ["a", "b"]
    assert json.loads((tmp_path / INDEX_FILE).read_text()) == index
    text = (tmp_path / "qc_razer4_n64_k128_g32.py").read_text()
    assert "# layers:     a\n#             b\n" in text
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    emit_all(specs, tmp_path)  # byte-identical on re-emission
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_options_that_do_not_change_the_decode_share_a_kernel() -> None:
    assert emit_kernel("fp4", 32, 64, 32, "l", opts={"scale": "pow2"}).file_name == \
        "qc_fp4_n32_k64_g32.py"
    custom = emit_kernel("razer4", 32, 64, 32, "l", opts={"specials": [3.0, -3.0, 7.0, -7.0]})
    assert custom.name.startswith("qc_razer4_gemv_n32_k64_g32_o")
    assert "SPECIAL_0=3.0" in custom.source


def test_errors() -> None:
    with pytest.raises(QCompilerError, match=r"group size 48 does not divide K=4096 in model\.x"):
        emit_kernel("razer4", 64, 4096, 48, "model.x")
    with pytest.raises(QCompilerError, match="unknown format 'razr4'"):
        emit_kernel("razr4", 64, 128, 32, "l")
    with pytest.raises(QCompilerError, match="needs format, N, K and group_size"):
        emit_all([{"format": "razer4", "N": 64}], "/nonexistent-never-written")

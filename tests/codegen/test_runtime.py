"""runtime.linear / load_kernels and the tuned-config cache (CPU, interpreter)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from kernel_helpers import activations, assert_matches, quantized

from qcompiler.codegen import runtime
from qcompiler.codegen.autotune_cache import FILE_NAME, TunedConfigs
from qcompiler.codegen.emit import emit_all
from qcompiler.codegen.specialize import KernelConfig, make_spec
from qcompiler.errors import QCompilerError


def test_linear_batched_input_bias_and_absent_parts() -> None:
    q, w = quantized("int4", 40, 128, 32)
    parts = {"codes": q.codes, "scales": q.scales, "zeros": q.zeros, "meta": None,
             "global_scale": None}  # as the custom ops pass them
    bias = activations(1, 40, seed=9)[0]
    for lead in ((1,), (2, 2), (3, 5)):  # M = 1, 4 (GEMV) and 15 (GEMM)
        x = activations(int(torch.tensor(lead).prod()), 128, seed=len(lead)).reshape(*lead, 128)
        y = runtime.linear(x, parts, format="int4", N=40, K=128, group_size=32, bias=bias)
        assert y.shape == (*lead, 40)
        assert_matches(y.reshape(-1, 40), x.reshape(-1, 128), w, bias, what=f"lead {lead}")


def test_load_kernels_registers_the_artifact_modules(tmp_path: Path) -> None:
    specs = [{"format": "nf4", "N": 24, "K": 64, "group_size": 32, "layer": f"layer.{i}"}
             for i in range(2)]
    emit_all(specs, tmp_path)
    modules = runtime.load_kernels(tmp_path)
    assert sorted(modules) == ["layer.0", "layer.1"]
    assert modules["layer.0"] is modules["layer.1"]
    assert runtime.module_for(make_spec("nf4", 24, 64, 32)) is modules["layer.0"]
    q, w = quantized("nf4", 24, 64, 32)
    x = activations(2, 64)
    y = runtime.linear(x, q.tensors(), format="nf4", N=24, K=64, group_size=32,
                       kernel_module=modules["layer.1"])
    assert_matches(y, x, w, what="artifact module")


def test_kernel_module_for_another_shape_is_refused(tmp_path: Path) -> None:
    emit_all([{"format": "nf4", "N": 24, "K": 64, "group_size": 32, "layer": "a"}], tmp_path)
    module = runtime.load_kernels(tmp_path)["a"]
    q, _ = quantized("nf4", 32, 64, 32)
    with pytest.raises(QCompilerError, match="re-emit the kernels"):
        runtime.linear(activations(1, 64), q.tensors(), format="nf4", N=32, K=64, group_size=32,
                       kernel_module=module)


def test_load_kernels_errors(tmp_path: Path) -> None:
    with pytest.raises(QCompilerError, match="no index.json"):
        runtime.load_kernels(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(QCompilerError, match="damaged"):
        runtime.load_kernels(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"kernels": {"gone.py": {}}, "layers": {}}))
    with pytest.raises(QCompilerError, match="gone.py, which is missing"):
        runtime.load_kernels(tmp_path)


def test_wrong_tensors_are_reported_not_read_out_of_bounds() -> None:
    q, _ = quantized("razer4", 24, 64, 32)
    parts = q.tensors()
    parts["codes"] = parts["codes"][:, :16].contiguous()
    with pytest.raises(ValueError, match="tensor 'codes' must be a contiguous torch.uint8 "
                                         r"\(24, 32\)"):
        runtime.linear(activations(1, 64), parts, format="razer4", N=24, K=64, group_size=32)


def test_cpu_without_interpreter_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, _ = quantized("razer4", 24, 64, 32)
    with pytest.raises(QCompilerError, match="run on CUDA tensors"):
        runtime.linear(activations(1, 64), q.tensors(), format="razer4", N=24, K=64,
                       group_size=32)


def test_tuned_config_cache_roundtrip(tmp_path: Path) -> None:
    cache = TunedConfigs()
    cfg = KernelConfig(1, 32, 256, 4, 1, 4, 2)
    key = make_spec("razer4", 4096, 4096, 128).tuning_key(runtime.KernelKind.GEMV, 1)
    cache.put("NVIDIA H100 80GB HBM3", key, cfg, 12.5)
    path = tmp_path / FILE_NAME
    cache.save(path)
    text = path.read_text()
    loaded = TunedConfigs.load(path)
    assert loaded.get("NVIDIA H100 80GB HBM3", key) == cfg
    assert loaded.get("NVIDIA A10", key) is None  # per GPU name
    other = TunedConfigs()
    other.put("NVIDIA A10", key, KernelConfig(1, 16, 128))
    other.save(path)  # merges into what the file holds
    merged = TunedConfigs.load(path)
    assert len(merged) == 2 and merged.get("NVIDIA H100 80GB HBM3", key) == cfg
    cache.save(path)
    assert TunedConfigs.load(path).to_json() == merged.to_json()
    assert text.endswith("\n") and json.loads(text)["version"] == 1


def test_damaged_cache_is_ignored_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    path.write_text("[1, 2")
    with pytest.warns(UserWarning, match="ignoring unreadable"):
        assert len(TunedConfigs.load(path)) == 0


def test_load_kernels_merges_the_artifact_cache(tmp_path: Path) -> None:
    emit_all([{"format": "fp4", "N": 24, "K": 64, "group_size": 32, "layer": "a"}], tmp_path)
    key = make_spec("fp4", 24, 64, 32).tuning_key(runtime.KernelKind.GEMV, 1)
    cache = TunedConfigs()
    cache.put("Some GPU", key, KernelConfig(1, 8, 64))
    cache.save(tmp_path / FILE_NAME)
    runtime.load_kernels(tmp_path)
    copy = tmp_path / "copy"
    copy.mkdir()
    saved = TunedConfigs.load(runtime.save_tuned_configs(copy))
    assert saved.get("Some GPU", key) == KernelConfig(1, 8, 64)

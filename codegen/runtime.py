"""Running generated kernels: find the module, pick GEMV or GEMM by M, pick a config, launch.

    y = linear(x, q.tensors(), format="razer4", N=4096, K=4096, group_size=128)
    modules = load_kernels("out/model/kernels")   # {layer name: module}, and its tuned configs
    python -m qcompiler.codegen.runtime tune out/model/kernels   # on a GPU: fill autotune.json

Modules come from, in order: the `kernel_module` argument; a module `load_kernels` registered
for the same specialization (an artifact's kernels/); or the source emitted on the fly into a
per-user cache directory ($QCOMPILER_KERNEL_CACHE, default ~/.cache/qcompiler/kernels; file
names carry a hash of the source, so a changed generator never reuses a stale file). The runtime
only ever launches emitted files, so what runs is what an artifact ships.

Configs on CUDA: the tuned-config cache (loaded with the artifact) for this GPU name, else the
configs shipped for this GPU model (codegen/tuned/*.json: Llama-3-8B shapes, every 4-bit
format), else a tuning run over `specialize.candidates` (median time in a CUDA graph) whose
winner is cached; `QCOMPILER_AUTOTUNE=0` skips tuning and uses `specialize.default_config`.
`save_tuned_configs(dir)` writes the cache next to the kernels. Off CUDA (TRITON_INTERPRET=1,
tests) the default config for the interpreter is used. The chosen config is memoized per
(spec, kernel, M bucket, device), so the decode hot path is a couple of dict lookups.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from qcompiler.codegen import autotune_cache, tuned
from qcompiler.codegen.autotune_cache import TunedConfigs
from qcompiler.codegen.emit import INDEX_FILE, emit_spec
from qcompiler.codegen.specialize import (DeviceLimits, KernelConfig, KernelKind, KernelSpec,
                                          candidates, default_config, kind_for, m_bucket,
                                          make_spec)
from qcompiler.errors import QCompilerError

_TUNED = TunedConfigs()  # every tuned or loaded config of this process
_MODULES: dict[KernelSpec, ModuleType] = {}  # spec -> emitted module (artifact's first)
_SPECS: dict[tuple[Any, ...], KernelSpec] = {}  # linear()'s arguments -> validated spec
_CONFIGS: dict[tuple[Any, ...], dict[str, int]] = {}  # (spec, kind, bucket, device) -> config


def linear(x: torch.Tensor, qtensor_tensors: dict[str, torch.Tensor | None], *, format: str,
           N: int, K: int, group_size: int, bias: torch.Tensor | None = None,
           kernel_module: ModuleType | None = None, opts: dict[str, Any] | str | None = None,
           layer: str | None = None) -> torch.Tensor:
    """y = x @ W^T (+ bias) with W the quantized [N, K] weight, for x of shape [..., K].

    `qtensor_tensors` is `QTensor.tensors()` (None entries are ignored, as the custom ops pass
    absent parts); `opts` the QTensor options (dict or the ops' JSON text), which matter only
    when they change the decode (custom RaZeR specials). `layer` only improves error messages.
    """
    spec = _spec(format, N, K, group_size, opts, layer)
    module = kernel_module if kernel_module is not None else module_for(spec)
    _check_module(module, spec)
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise QCompilerError("codegen: generated kernels run on CUDA tensors (or on the CPU "
                             "with TRITON_INTERPRET=1); use the reference op on this device")
    tensors = {k: v for k, v in qtensor_tensors.items() if v is not None}
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    config = _config_for(spec, module, x2, tensors, bias) if m else None
    y = module.linear(x2, tensors, bias, config)
    return y.reshape(*x.shape[:-1], N)


def load_kernels(artifact_kernels_dir: str | Path) -> dict[str, ModuleType]:
    """Import an artifact's kernels (once per file) and merge its tuned configs.

    Returns {layer name: module}. The modules also become the ones `linear` uses for their
    specializations, so the custom ops need no extra plumbing.
    """
    d = Path(artifact_kernels_dir)
    index_path = d / INDEX_FILE
    if not index_path.is_file():
        raise QCompilerError(f"codegen: no {INDEX_FILE} in {d}; re-run qcompile to emit kernels")
    try:
        index = json.loads(index_path.read_text())
        files = index["kernels"]
        layers = index.get("layers", {})
    except (ValueError, KeyError, TypeError) as e:
        raise QCompilerError(f"codegen: {index_path} is damaged ({e}); re-run qcompile") from e
    modules: dict[str, ModuleType] = {}
    for file_name in sorted(files):
        path = d / file_name
        if not path.is_file():
            raise QCompilerError(f"codegen: {index_path} lists {file_name}, which is missing; "
                                 f"re-run qcompile")
        module = import_kernel_file(path)
        spec = make_spec(module.FORMAT, module.N, module.K, module.GROUP_SIZE, module.OPTS or None)
        _MODULES[spec] = module
        modules[file_name] = module
    _TUNED.merge(TunedConfigs.load(d / autotune_cache.FILE_NAME))
    _CONFIGS.clear()
    return {layer: modules[f] for layer, f in sorted(layers.items()) if f in modules}


def save_tuned_configs(artifact_kernels_dir: str | Path) -> Path:
    """Write every config tuned or loaded in this process to DIR/autotune.json (merged)."""
    path = Path(artifact_kernels_dir) / autotune_cache.FILE_NAME
    _TUNED.save(path)
    from qcompiler import manifest

    root = path.parent.parent
    if manifest.is_artifact(root):  # keep the artifact loadable: record the new file's hash
        manifest.record_file(root, path.relative_to(root).as_posix())
    return path


def module_for(spec: KernelSpec) -> ModuleType:
    """The emitted module of `spec`: registered by load_kernels, else emitted into the cache."""
    module = _MODULES.get(spec)
    if module is None:
        src = emit_spec(spec)
        digest = hashlib.sha1(src.source.encode()).hexdigest()[:12]
        path = _cache_dir() / f"{src.file_name[:-3]}-{digest}.py"
        if not path.is_file() or path.read_text() != src.source:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(src.source)
            tmp.replace(path)
        module = import_kernel_file(path)
        _MODULES[spec] = module
    return module


def import_kernel_file(path: str | Path) -> ModuleType:
    """Import an emitted kernel file under a unique module name (Triton needs the file on disk:
    it reads the kernels' source back with inspect)."""
    path = Path(path).resolve()
    name = f"qcompiler_kernels.{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    cached = sys.modules.get(name)
    if cached is not None and getattr(cached, "__qc_mtime__", None) == path.stat().st_mtime_ns:
        return cached
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise QCompilerError(f"codegen: cannot import kernel file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.__qc_mtime__ = path.stat().st_mtime_ns  # type: ignore[attr-defined]
    sys.modules[name] = module
    return module


def tune(spec: KernelSpec, module: ModuleType, kind: KernelKind, bucket: int, x: torch.Tensor,
         tensors: dict[str, torch.Tensor], bias: torch.Tensor | None = None,
         limits: DeviceLimits | None = None,
         configs: list[KernelConfig] | None = None) -> tuple[KernelConfig, float]:
    """Time every candidate config (`configs`, default `specialize.candidates`) on these inputs
    (CUDA); return (fastest, its median us).

    Timed inside a CUDA graph (triton.testing.do_bench_cudagraph): a decode GEMV runs for a few
    microseconds, less than a Python launch, so event timing would rank launch overhead.
    """
    import triton.testing

    limits = limits or DeviceLimits.for_device(x.device)
    fn = module.gemv if kind is KernelKind.GEMV else module.gemm
    best: tuple[float, KernelConfig] | None = None
    failures = []
    for cfg in configs if configs is not None else candidates(spec, kind, bucket, limits):
        launch = cfg.as_launch_dict()
        try:
            fn(x, tensors, bias, launch)  # compile outside the graph capture
            torch.cuda.synchronize(x.device)
            ms = triton.testing.do_bench_cudagraph(
                lambda launch=launch: fn(x, tensors, bias, launch), rep=20, return_mode="median")
        except Exception as e:  # noqa: BLE001  a config the compiler rejects just drops out
            failures.append(f"{cfg}: {type(e).__name__}")
            continue
        if best is None or ms < best[0]:
            best = (ms, cfg)
    if best is None:
        raise QCompilerError(f"codegen: no config of {spec.kernel_name(kind)} ran on "
                             f"{limits.name}: {'; '.join(failures[:3])}")
    return best[1], best[0] * 1000.0


def tune_artifact(artifact_kernels_dir: str | Path,
                  m_values: tuple[int, ...] = (1, 2, 4, 16, 64, 256), force: bool = False) -> Path:
    """Tune every kernel of an artifact on this GPU for the M buckets of `m_values` and store
    the winners in DIR/autotune.json, so later loads on the same GPU model skip tuning.

    Inputs are a random weight quantized with the layer's format (timing does not depend on
    the values). Entries already tuned for this GPU are kept unless `force`.
    """
    from qcompiler import formats
    from qcompiler.codegen.decode_plan import normalize_opts

    if not torch.cuda.is_available():
        raise QCompilerError("codegen: tuning needs a CUDA GPU; none is visible")
    d = Path(artifact_kernels_dir)
    load_kernels(d)
    index = json.loads((d / INDEX_FILE).read_text())
    gpu = torch.cuda.get_device_name()
    limits = DeviceLimits.for_device(torch.device("cuda"))
    for entry in index["kernels"].values():
        spec = make_spec(entry["format"], entry["N"], entry["K"], entry["group_size"],
                         entry.get("opts") or None)
        module = module_for(spec)
        w = torch.randn(spec.N, spec.K, device="cuda") * 0.02
        q = formats.get(spec.format).quantize(w, group_size=spec.group_size, search="rtn",
                                              **normalize_opts(spec.opts))
        for bucket in sorted({m_bucket(m) for m in m_values}):
            kind = kind_for(bucket)
            key = spec.tuning_key(kind, bucket)
            if _TUNED.get(gpu, key) is not None and not force:
                continue
            x = torch.randn(bucket, spec.K, device="cuda", dtype=torch.float16)
            cfg, us = tune(spec, module, kind, bucket, x, q.tensors(), None, limits)
            _TUNED.put(gpu, key, cfg, round(us, 3))
    _CONFIGS.clear()
    return save_tuned_configs(d)


def main(argv: list[str] | None = None) -> int:
    """`python -m qcompiler.codegen.runtime tune OUT/kernels [--m 1,16,256] [--force]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m qcompiler.codegen.runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tune", help="tune an artifact's kernels on this GPU, store autotune.json")
    t.add_argument("kernels_dir", type=Path)
    t.add_argument("--m", default="1,2,4,16,64,256", help="M values (comma-separated)")
    t.add_argument("--force", action="store_true", help="retune entries already in the cache")
    args = parser.parse_args(argv)
    try:
        path = tune_artifact(args.kernels_dir, tuple(int(v) for v in args.m.split(",")),
                             force=args.force)
    except QCompilerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def autotune_enabled() -> bool:
    return os.environ.get("QCOMPILER_AUTOTUNE", "1") != "0"


# ----------------------------------------------------------------------------- internals


def _spec(format: str, N: int, K: int, group_size: int, opts: Any, layer: str | None) -> KernelSpec:
    opts_key = opts if opts is None or isinstance(opts, str) else json.dumps(opts, sort_keys=True)
    key = (format, N, K, group_size, opts_key)
    spec = _SPECS.get(key)
    if spec is None:
        spec = make_spec(format, N, K, group_size, opts, layer=layer)
        _SPECS[key] = spec
    return spec


def _check_module(module: ModuleType, spec: KernelSpec) -> None:
    got = (getattr(module, "FORMAT", None), getattr(module, "N", None),
           getattr(module, "K", None), getattr(module, "GROUP_SIZE", None),
           getattr(module, "OPTS", None))
    want = (spec.format, spec.N, spec.K, spec.group_size, spec.opts)
    if got != want:
        raise QCompilerError(f"codegen: kernel module {getattr(module, '__name__', module)} is "
                             f"specialized for {got[:4]}, the layer needs {want[:4]}; "
                             f"re-emit the kernels")


def _config_for(spec: KernelSpec, module: ModuleType, x: torch.Tensor,
                tensors: dict[str, torch.Tensor], bias: torch.Tensor | None) -> dict[str, int]:
    m = x.shape[0]
    kind, bucket = kind_for(m), m_bucket(m)
    memo = (spec, kind, bucket, str(x.device))
    config = _CONFIGS.get(memo)
    if config is not None:
        return config
    if not x.is_cuda:
        cfg = default_config(spec, kind, bucket, DeviceLimits.interpreter())
    else:
        gpu = torch.cuda.get_device_name(x.device)
        key = spec.tuning_key(kind, bucket)
        cfg = _TUNED.get(gpu, key) or tuned.shipped_config(gpu, key)
        if cfg is None:
            limits = DeviceLimits.for_device(x.device)
            if autotune_enabled():
                cfg, us = tune(spec, module, kind, bucket, x, tensors, bias, limits)
                _TUNED.put(gpu, key, cfg, round(us, 3))
            else:
                cfg = default_config(spec, kind, bucket, limits)
    config = cfg.as_launch_dict()
    _CONFIGS[memo] = config
    return config


def _cache_dir() -> Path:
    env = os.environ.get("QCOMPILER_KERNEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "qcompiler" / "kernels"


if __name__ == "__main__":
    sys.exit(main())

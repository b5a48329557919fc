"""The compiled artifact: a directory that `qcompiler.load` turns back into a runnable model.

    OUT/
      manifest.json        format, pipeline, versions, per-layer formats and shapes, file hashes
      program.pt2          the quantized program (torch.export archive, tensors stubbed out)
      weights.safetensors  every tensor of the program: packed codes, scales, fp norms/embeddings
                           (unquantized fp32 tensors as bf16/fp16 when that is exact, see
                           qcompiler.storage_dtype; the manifest's tensor table says which)
      report.json          per-layer quantization error and per-pass statistics
      kernels/             one generated Triton kernel per layer shape (when codegen is present)
      tokenizer/           the model's tokenizer files, when the source had them
      build.json           facts about this compile run: date, wall time, pass timings, peak RSS

Tensors live only in weights.safetensors: program.pt2 keeps each tensor as a one-element stub
with its shape (so the archive stays small and nothing is stored twice), and `load` puts the real
tensors back by name. Writing is atomic: everything goes to a temporary sibling directory that is
renamed into place at the end, so a failed or interrupted compile leaves no OUT behind, and an
existing OUT is replaced only with `force`.

Every file except build.json is a function of the input and the options only: compiling twice
gives byte-identical files, manifest included. The facts that differ from run to run (creation
date, wall and pass times, peak RSS, host) therefore live in build.json, which the manifest names
(`"build_file"`) but does not hash, so that a reproducibility check can compare every other file
byte for byte and `load` does not reject an artifact whose build record was edited or dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import struct
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from qcompiler.errors import QCompilerError
from qcompiler.manifest import (ARTIFACT_VERSION, BUILD, MANIFEST,  # noqa: F401  (public here)
                                MAX_MANIFEST_BYTES, READABLE_VERSIONS, file_hashes, is_artifact,
                                read_manifest, record_file, sha256_file, write_json)
from qcompiler.program import Program

PROGRAM, REPORT = "program.pt2", "report.json"
WEIGHTS = "weights.safetensors"
KERNELS, TOKENIZER = "kernels", "tokenizer"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
    "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
)
# Keys of program.meta that describe this compile run rather than the model.
# Never written into program.pt2: streaming handles, reports and weight plans are per-compile state.
TRANSIENT_META = ("lazy_tensors", "quantize_report", "weight_plans")
UNSTABLE_NODE_META = ("from_node", "stack_trace")


def write_artifact(
    program: Program,
    out_dir: str | os.PathLike,
    *,
    pipeline: str,
    format: str,
    report: dict[str, Any],
    force: bool = False,
    build: dict[str, Any] | None = None,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> Path:
    """Write the artifact for a compiled `program` to `out_dir`; returns its path."""
    out = Path(out_dir)
    check_replaceable(out, force)
    tmp = _make_temp_dir(out)
    try:
        with _sigterm_as_exit():
            _write_contents(program, tmp, pipeline=pipeline, format=format, report=report,
                            build=build or {}, progress=progress)
            _move_into_place(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise QCompilerError(f"cannot write {out}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_contents(program: Program, tmp: Path, *, pipeline: str, format: str,
                    report: dict[str, Any], build: dict[str, Any], progress: Any) -> None:
    from qcompiler.storage_dtype import cast_blocks, storage_dtypes

    tensors = program.tensors()
    stored_as = storage_dtypes(program, tensors)
    stored = {name: _stub(t, stored_as[name]) for name, t in tensors.items()}
    save_safetensors(tmp / WEIGHTS, stored,
                     lambda name: cast_blocks(_tensor_value(program, name), stored_as[name]),
                     metadata={"format": format, "artifact_version": str(ARTIFACT_VERSION)},
                     progress=progress)
    save_program(program, tmp / PROGRAM)
    layers = layer_table(program, report)
    kernels = _emit_kernels(program, tmp / KERNELS)
    _copy_tokenizer(program, tmp / TOKENIZER)
    clean_report = _deterministic_report(report, pipeline, format)
    write_json(tmp / REPORT, clean_report)
    manifest = {
        "artifact_version": ARTIFACT_VERSION,
        "format": format,
        "pipeline": pipeline,
        "versions": versions(),
        "model": model_info(program),
        "layers": layers,
        "summary": {**_summary(layers, stored),
                    **size_summary((tmp / WEIGHTS).stat().st_size, report.get("model_parameters"))},
        "kernels": kernels,
        "tensors": tensor_table(stored, tensors),
        "files": file_hashes(tmp),
        "build_file": BUILD,
    }
    write_json(tmp / MANIFEST, manifest)
    # Last, so that the peak RSS covers writing every other file.
    write_json(tmp / BUILD, {
        **build, "pass_seconds": _pass_seconds(report), "host": platform.machine(),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "note": "facts about this compile run; the only file that differs between runs"})


# ---- tensors -----------------------------------------------------------------------------------
_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}


def save_safetensors(path: Path, tensors: dict[str, torch.Tensor],
                     fetch: Callable[[str], Any] | None = None, *,
                     metadata: dict[str, str] | None = None, progress: Any = None) -> None:
    """Write a safetensors file one tensor at a time (never the whole file in memory).

    The header comes from `tensors` (only shapes and dtypes are read, so they may be stand-ins);
    the data from `fetch(name)` when given: a tensor, or an iterable of row blocks, which lets
    tensors streamed from a checkpoint be read a slice at a time. Header keys are sorted and
    data is in name order, so the bytes depend only on the tensors.
    """
    names = sorted(tensors)
    fetch = fetch or tensors.__getitem__
    header: dict[str, Any] = {"__metadata__": dict(sorted((metadata or {}).items()))}
    offset = 0
    for name in names:
        t = tensors[name]
        if t.dtype not in _ST_DTYPES:
            raise QCompilerError(f"cannot store tensor {name} of dtype {t.dtype} in safetensors")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in (progress(names) if progress else names):
            value = fetch(name)
            blocks = [value] if isinstance(value, torch.Tensor) else value
            written, expected = 0, header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
            for t in blocks:  # a tensor, or row blocks of one (streamed from a checkpoint)
                t = t.detach().cpu().contiguous()
                if t.dtype != tensors[name].dtype:
                    raise QCompilerError(f"tensor {name} changed dtype while writing {path.name}")
                if t.numel():
                    f.write(t.reshape(-1).view(torch.uint8).numpy().data)
                written += t.numel() * t.element_size()
            if written != expected:
                raise QCompilerError(f"tensor {name} changed size while writing {path.name}")


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise QCompilerError(f"cannot read {path}: {e}") from None


def _tensor_value(program: Program, name: str) -> torch.Tensor | Iterable[torch.Tensor]:
    lazy = program.meta.get("lazy_tensors") or {}
    if name in lazy:
        from qcompiler.lazy_tensors import iter_lazy_tensor

        return iter_lazy_tensor(program, name)
    return program.get_tensor(name)


def save_program(program: Program, path: Path) -> None:
    """torch.export.save the program with every tensor stubbed (values live in safetensors)."""
    from qcompiler.export_archive import EXTRA_FILE, program_meta

    ep = program.export()
    for node in ep.graph.nodes:  # provenance holds Python object ids and local file paths
        for key in UNSTABLE_NODE_META:
            node.meta.pop(key, None)
    names = set(program.tensors())
    for table in (ep.state_dict, ep.constants):
        for key, value in list(table.items()):
            if key in names and isinstance(value, torch.Tensor):
                table[key] = _stub(value)
    meta = {k: v for k, v in program.meta.items() if k not in TRANSIENT_META}
    meta["tensors_file"] = WEIGHTS  # the values of the stubs: load through qcompiler.load
    shell = Program(program.gm, program.example_inputs, program.input_names,
                    program.dynamic_dims, program.kind, program.source, meta)
    extra = {EXTRA_FILE: json.dumps(program_meta(shell), sort_keys=True)}
    with warnings.catch_warnings():  # torch warns that stubs are not "complete" tensors
        warnings.simplefilter("ignore")
        torch.export.save(ep, str(path), extra_files=extra)


def safetensors_dtype(dtype: torch.dtype) -> str | None:
    """The safetensors name of a torch dtype; None for one that safetensors cannot store."""
    return _ST_DTYPES.get(dtype)


def tensor_table(stored: dict[str, torch.Tensor],
                 loaded: dict[str, torch.Tensor] | None = None) -> dict[str, dict[str, Any]]:
    """name -> safetensors dtype and shape: what `load` checks the weights file against; plus
    `load_as`, the program's dtype, for a tensor stored narrower than the program uses it."""
    table = {}
    for name, t in sorted(stored.items()):
        entry: dict[str, Any] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape)}
        wide = (loaded or {}).get(name)
        if wide is not None and wide.dtype != t.dtype:
            entry["load_as"] = _ST_DTYPES[wide.dtype]
        table[name] = entry
    return table


def _stub(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A tensor with t's shape (and dtype, unless given) backed by a single element (stride 0)."""
    stub = torch.zeros((), dtype=dtype or t.dtype).expand(t.shape)
    if isinstance(t, torch.nn.Parameter):
        return torch.nn.Parameter(stub, requires_grad=False)
    return stub


# ---- manifest pieces ---------------------------------------------------------------------------
def layer_table(program: Program, report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per linear layer: quantized ones from the graph, fp ones from the report."""
    from qcompiler import formats
    from qcompiler.ops import format_of

    rows: dict[str, dict[str, Any]] = {}
    for node in program.graph.nodes:
        fmt = format_of(node.target) if node.op == "call_function" else None
        if fmt is None:
            continue
        kw = node.kwargs
        rows[kw["layer"]] = {
            "name": kw["layer"], "format": fmt, "group_size": kw["group_size"], "n": kw["n"],
            "k": kw["k"], "bits_per_weight": formats.get(fmt).bits_per_weight(kw["group_size"]),
        }
    for entry in report.get("layers", []):
        if entry.get("status") == "skipped" and entry["name"] not in rows:
            rows[entry["name"]] = {"name": entry["name"], "format": "fp", "n": entry["n"],
                                   "k": entry["k"], "reason": entry.get("reason", "")}
    return [rows[k] for k in sorted(rows)]


def kernel_specs(program: Program) -> list[dict[str, Any]]:
    """One entry per quantized layer (format, N, K, group size, opts, layer), in graph order:
    what codegen specializes (it shares one kernel file between layers of the same shape)."""
    from qcompiler.ops import format_of

    specs = []
    for node in program.graph.nodes:
        fmt = format_of(node.target) if node.op == "call_function" else None
        if fmt is not None:
            kw = node.kwargs
            specs.append({"format": fmt, "N": kw["n"], "K": kw["k"],
                          "group_size": kw["group_size"], "opts": kw.get("opts") or None,
                          "layer": kw["layer"]})
    return specs


def _emit_kernels(program: Program, directory: Path) -> dict[str, Any]:
    specs = kernel_specs(program)
    try:
        from qcompiler.codegen.emit import emit_all
    except ImportError as e:
        return {"status": f"not emitted: codegen unavailable ({e})", "files": []}
    if not specs:
        return {"status": "no quantized layers", "files": []}
    directory.mkdir()
    emit_all(specs, directory)
    files = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    return {"status": "emitted", "files": files}


def _copy_tokenizer(program: Program, directory: Path) -> None:
    model_dir = program.meta.get("model_dir")
    if not model_dir or not Path(model_dir).is_dir():
        return
    found = [Path(model_dir) / f for f in TOKENIZER_FILES if (Path(model_dir) / f).is_file()]
    if found:
        directory.mkdir()
        for f in found:
            shutil.copyfile(f, directory / f.name)


def model_info(program: Program) -> dict[str, Any]:
    config = program.meta.get("config") or {}
    return {
        "source": program.source, "kind": program.kind,
        "architecture": program.meta.get("architecture"),
        "model_type": program.meta.get("model_type"),
        "inputs": list(program.input_names),
        "vocab_size": config.get("vocab_size"),
        "bos_token_id": config.get("bos_token_id"), "eos_token_id": config.get("eos_token_id"),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from qcompiler.version import __version__

    out = {"qcompiler": __version__, "torch": torch.__version__}
    for name in ("transformers", "safetensors", "triton"):
        try:  # the installed version, without importing the package (transformers: ~1.5 s)
            out[name] = version(name)
        except PackageNotFoundError:  # an optional package missing is not an error
            out[name] = "absent"
    return out


def _summary(layers: list[dict[str, Any]], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    quantized = [r for r in layers if r["format"] != "fp"]
    weights = sum(r["n"] * r["k"] for r in quantized)
    bits = sum(r["n"] * r["k"] * r["bits_per_weight"] for r in quantized)
    return {
        "layers_quantized": len(quantized), "layers_fp": len(layers) - len(quantized),
        "quantized_weights": weights,
        "bits_per_weight": round(bits / weights, 4) if weights else None,
        "tensor_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
    }


def size_summary(weights_bytes: int, parameters: int | None) -> dict[str, Any]:
    """The artifact's weights against the model's fp16 checkpoint (2 bytes per parameter) and
    its bits per parameter, embeddings and norms included (the whole-model figure)."""
    out: dict[str, Any] = {"weights_bytes": weights_bytes}
    if parameters:
        out.update(parameters=parameters, fp16_bytes=2 * parameters,
                   bits_per_parameter=round(8 * weights_bytes / parameters, 3))
    return out


def size_line(summary: dict[str, Any]) -> str:
    """'1.23 MB, 4.51 bits/parameter (fp16 checkpoint 4.36 MB: 3.5x smaller)' from a summary;
    'larger' (with what to do) when the tensors kept in fp outweigh the saving, as a float32
    checkpoint's embedding table does."""
    mb = summary["weights_bytes"] / 1e6
    if not summary.get("parameters"):
        return f"{mb:.2f} MB of weights"
    fp16 = summary["fp16_bytes"] / 1e6
    head = f"{mb:.2f} MB, {summary['bits_per_parameter']:.2f} bits/parameter (fp16 checkpoint"
    if mb <= fp16:
        return f"{head} {fp16:.2f} MB: {fp16 / mb:.1f}x smaller)"
    return (f"{head} {fp16:.2f} MB: {mb / fp16:.1f}x larger: the tensors kept in fp stay in the "
            "checkpoint's dtype; --quantize-embeddings stores embedding tables as int8 rows)")


def _deterministic_report(report: dict[str, Any], pipeline: str, format: str) -> dict[str, Any]:
    """The pass report without wall times (those go to build.json)."""
    from qcompiler.export_archive import jsonable

    out = {k: v for k, v in report.items() if k != "passes"}
    out["passes"] = [{k: v for k, v in p.items() if k != "seconds"}
                     for p in report.get("passes", [])]
    errors = [e["rel_error"] for e in report.get("layers", []) if "rel_error" in e]
    out["summary"] = {
        "format": format, "pipeline": pipeline, "layers": len(report.get("layers", [])),
        "mean_rel_error": float(f"{sum(errors) / len(errors):.6g}") if errors else None,
        "max_rel_error": max(errors) if errors else None,
    }
    return jsonable(out)


def _pass_seconds(report: dict[str, Any]) -> list[list[Any]]:
    return [[p.get("pass"), p.get("seconds")] for p in report.get("passes", [])]


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- files -------------------------------------------------------------------------------------
def read_build(path: str | os.PathLike) -> dict[str, Any]:
    """The build record (build.json) of the artifact at `path`; {} when absent, oversized or
    unreadable: it is informational (outside the integrity record), nothing depends on it."""
    file = Path(path) / BUILD
    try:
        if file.is_symlink() or file.stat().st_size > 1 << 20:
            return {}
        record = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def check_replaceable(out: Path, force: bool) -> None:
    """Refuse to write over `out` unless `force` and it is an artifact or an empty directory:
    --force must never delete a user's files (a thesis directory passed by mistake as -o)."""
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        raise QCompilerError(f"{out} already exists; choose another -o or pass --force")
    if out.is_symlink() or not out.is_dir():
        raise QCompilerError(f"{out} exists and is not a directory; --force replaces only a "
                             "qcompiler artifact or an empty directory: choose another -o")
    if any(out.iterdir()) and not is_artifact(out):
        raise QCompilerError(f"{out} is not a qcompiler artifact (no valid {MANIFEST}); "
                             "--force replaces only an artifact or an empty directory: "
                             "choose another -o")


def _make_temp_dir(out: Path) -> Path:
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
        os.chmod(tmp, 0o777 & ~_umask())
        return tmp
    except OSError as e:
        raise QCompilerError(f"cannot write {out}: {e.strerror or e}") from None


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """While writing, SIGTERM raises SystemExit so the temporary directory is removed
    (Ctrl-C already raises KeyboardInterrupt); only the main thread can install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename tmp to out; an existing out (only reached with force) is removed after."""
    old = None
    if out.is_dir() and not out.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.absolute().parent))
        os.replace(out, old / "x")
    elif out.exists() or out.is_symlink():
        out.unlink()
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

"""`bench/gpu_all.py OUT --tune`: time the shipped candidate sets, write OUT/<GPU file>.json.

For every entry of codegen/tuned/<GPU>.json (or, for a GPU without a shipped file, the same
entries built from specialize.default_config for this device) it times the entry's few
candidates on a random weight of that shape (runtime.tune: median inside a CUDA graph) and
records the fastest with its time. The candidates are first compiled in parallel by gpu_all's
prewarm workers (`warm_tasks` / `warm`, up to TUNE_PREWARM of the budget): about a thousand
compiles in all, minutes in one process. The file is rewritten after every entry, and entries
already tuned in OUT's file are skipped, so a run stopped by its budget resumes where it stopped
(bring OUT's file back for the next run). Copy the result over codegen/tuned/ to ship it (its
"tuned" flag is true once every entry is).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch


def _state(ctx: Any) -> tuple[Path, dict, Any]:
    """(OUT's file, its data: OUT's own when resuming, else the shipped or default file,
    the device limits)."""
    from qcompiler.codegen import tuned
    from qcompiler.codegen.specialize import DeviceLimits

    gpu = torch.cuda.get_device_name() if ctx.device.type == "cuda" else "interpreter"
    limits = (DeviceLimits.for_device(ctx.device) if ctx.device.type == "cuda"
              else DeviceLimits.interpreter())
    shipped = tuned.file_for(gpu)
    name = shipped.name if shipped else "".join(c if c.isalnum() else "_" for c in gpu) + ".json"
    out = Path(ctx.out_dir) / name
    if out.is_file():
        data = json.loads(out.read_text())
    elif shipped is not None:
        data = json.loads(shipped.read_text())
    else:
        data = tuned.default_file(gpu, limits)
    return out, data, limits


def warm_tasks(ctx: Any) -> list[tuple[str, int, int]]:
    """(format, N, K) of every spec with an entry still to tune: the parallel prewarm's units."""
    from qcompiler.codegen import tuned
    from qcompiler.codegen.specialize import kind_for

    _, data, _ = _state(ctx)
    entries = data["gpus"][data["match"]]
    return [(s.format, s.N, s.K) for s in tuned.shipped_specs() if s.format in ctx.formats
            and not all(entries.get(s.tuning_key(kind_for(b), b), {}).get("tuned")
                        for b in tuned.BUCKETS)]


def warm(ctx: Any, task: tuple[str, int, int]) -> None:
    """Compile every candidate of one spec's untuned entries (a worker process of --tune)."""
    if ctx.dry_run:  # the interpreter compiles nothing (and would run real-size launches)
        return
    from gpu_checks import quantized

    from qcompiler.codegen import runtime, tuned
    from qcompiler.codegen.specialize import KernelConfig, KernelKind, kind_for, make_spec

    _, data, limits = _state(ctx)
    entries = data["gpus"][data["match"]]
    fmt, n, k = task
    spec = make_spec(fmt, n, k, tuned.group_size_for(fmt))
    q, _ = quantized(fmt, n, k, ctx.device, seed=1)
    tensors = {key: v for key, v in q.tensors().items() if v is not None}
    module = runtime.module_for(spec)
    for bucket in tuned.BUCKETS:
        kind = kind_for(bucket)
        entry = entries.get(spec.tuning_key(kind, bucket))
        cands = (entry["candidates"] if entry else
                 [c.to_json() for c in tuned.candidate_set(spec, bucket, limits)])
        if entry and entry.get("tuned"):
            continue
        fn = module.gemv if kind is KernelKind.GEMV else module.gemm
        x = torch.randn(bucket, spec.K, device=ctx.device).half()
        for c in cands:
            try:
                fn(x, tensors, None, KernelConfig.from_json(c).as_launch_dict())
            except Exception:  # noqa: BLE001  a config the compiler rejects drops out in tune
                pass


def tune(ctx: Any, report: Any, deadline: float) -> Path:
    from qcompiler.codegen import runtime, tuned
    from qcompiler.codegen.specialize import KernelConfig, kind_for

    out, data, limits = _state(ctx)
    gpu = data["match"]
    entries = data["gpus"][data["match"]]
    todo = [s for s in tuned.shipped_specs() if s.format in ctx.formats]
    for spec in todo:
        from gpu_checks import quantized  # bench/ is on sys.path (gpu_all.py puts it there)

        q = None
        for bucket in tuned.BUCKETS:
            key = spec.tuning_key(kind_for(bucket), bucket)
            entry = entries.get(key)
            if entry is None:
                cands = tuned.candidate_set(spec, bucket, limits)
                entry = entries[key] = {"config": cands[0].to_json(), "us": None,
                                        "tuned": False,
                                        "candidates": [c.to_json() for c in cands]}
            if entry.get("tuned"):
                continue
            if time.time() > deadline:
                report.note("tune", f"stopped at {key}: budget spent; run again to resume")
                return _write(out, data)
            cands = [KernelConfig.from_json(c) for c in entry["candidates"]]
            module = runtime.module_for(spec)
            if ctx.dry_run:  # the interpreter cannot time: record the default, untuned
                best, us = cands[0], None
            else:
                if q is None:
                    q, _ = quantized(spec.format, spec.N, spec.K, ctx.device, seed=1)
                tensors = {k: v for k, v in q.tensors().items() if v is not None}
                x = torch.randn(bucket, spec.K, device=ctx.device).half()
                best, us = runtime.tune(spec, module, kind_for(bucket), bucket, x, tensors,
                                        None, limits, configs=cands)
            entry.update(config=best.to_json(), us=None if us is None else round(us, 3),
                         tuned=not ctx.dry_run)
            report.add("tune", {"key": key, "candidates": len(cands), "best_us": us,
                                "config": json.dumps(best.to_json(), sort_keys=True)})
            _write(out, data)
    data["tuned"] = all(e.get("tuned") for e in entries.values())
    if data["tuned"]:
        data["note"] = f"tuned on {gpu} by bench/gpu_all.py --tune"
    return _write(out, data)


def _write(path: Path, data: dict) -> Path:
    from qcompiler.codegen import tuned

    tmp = path.with_suffix(".tmp")
    tmp.write_text(tuned.dumps(data))
    tmp.replace(path)
    return path

"""Launch configs that ship with the package, one JSON file per GPU model (tuned or not).

    shipped_config("NVIDIA H200", spec.tuning_key(kind, bucket))   # KernelConfig or None
    python -m qcompiler.codegen.tuned write-defaults                 # regenerate the files

Autotuning a kernel on first use compiles and times a few dozen configs (tens of seconds per
shape); a benchmark or a server must not pay that. So for the GPUs we target each file here
holds, per (format, Llama-3-8B shape, M bucket), the config to launch and a small candidate set
(at most CANDIDATES configs) that `python bench/gpu_all.py OUT --tune` times on the GPU; the
tuned file it writes replaces the one here. The files use autotune_cache's layout (so
`TunedConfigs` reads them), with per-file "match" (a GPU-name prefix: "NVIDIA H100" covers the
SXM, PCIe and NVL parts) and "tuned" flags, and per entry "tuned" and "candidates".

Files marked `"tuned": false` hold the heuristic default (specialize.default_config for a
132-SM, 227 KiB-shared-memory Hopper) and were never timed: no GPU was available when they were
written. The runtime consults them after the artifact's own autotune.json and before tuning.
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from qcompiler.codegen.autotune_cache import VERSION, TunedConfigs
from qcompiler.codegen.specialize import (M_BUCKETS, DeviceLimits, KernelConfig, KernelSpec,
                                          default_config, kind_for, make_spec, prune)

DIR = Path(__file__).resolve().parent
# GPU-name prefix -> file. Both are Hopper with 132 SMs (SXM) and 227 KiB of shared memory.
GPUS = {"NVIDIA H100": "NVIDIA_H100.json", "NVIDIA H200": "NVIDIA_H200.json"}
FORMATS = ("razer4", "nvfp4-razer", "fp4", "int4", "int4-sym", "nvfp4", "mxfp4", "pot4", "nf4")
LLAMA3_8B_SHAPES = ((4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336))  # (N, K)
GROUP_SIZE = 128  # formats with fixed blocks (nvfp4 16, mxfp4 32) use theirs
BUCKETS = tuple(b for b in M_BUCKETS if b in (1, 2, 4, 16, 64, 256))
CANDIDATES = 5
UNTUNED_NOTE = ("heuristic defaults (specialize.default_config), never timed on this GPU; "
                "`python bench/gpu_all.py OUT --tune` writes a tuned file to replace this one")


def group_size_for(fmt: str) -> int:
    from qcompiler import formats

    f = formats.get(fmt)
    return GROUP_SIZE if GROUP_SIZE in f.group_sizes else f.default_group_size


def shipped_specs() -> list[KernelSpec]:
    """Every specialization the shipped files cover: formats x Llama-3-8B linear shapes."""
    return [make_spec(fmt, n, k, group_size_for(fmt)) for fmt in FORMATS
            for n, k in LLAMA3_8B_SHAPES]


def file_for(gpu: str) -> Path | None:
    """The shipped file for a GPU name (by prefix), or None."""
    for prefix, name in GPUS.items():
        if gpu.startswith(prefix) and (DIR / name).is_file():
            return DIR / name
    return None


@lru_cache(maxsize=8)
def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def is_tuned(path: Path) -> bool:
    """Whether a shipped file was tuned on its GPU (False: heuristic defaults)."""
    return bool(_load(path).get("tuned"))


def shipped_config(gpu: str, key: str) -> KernelConfig | None:
    """The shipped config for this GPU and tuning key, or None."""
    entry = shipped_entry(gpu, key)
    return None if entry is None else KernelConfig.from_json(entry["config"])


def shipped_entry(gpu: str, key: str) -> dict[str, Any] | None:
    path = file_for(gpu)
    if path is None:
        return None
    data = _load(path)
    return data["gpus"].get(data["match"], {}).get(key)


def candidate_set(spec: KernelSpec, bucket: int, limits: DeviceLimits) -> list[KernelConfig]:
    """The default config and a few neighbours (split-K, tile width, warps), each accepted by
    `prune`: what --tune times. Small on purpose: every config is a compile."""
    kind = kind_for(bucket)
    base = default_config(spec, kind, bucket, limits)
    d = base.to_json()
    variants = [dict(d, split_k=d["split_k"] * 2), dict(d, split_k=max(1, d["split_k"] // 2)),
                dict(d, block_n=d["block_n"] * 2), dict(d, block_n=max(16, d["block_n"] // 2)),
                dict(d, num_warps=8 if d["num_warps"] == 4 else 4)]
    out = [base]
    for v in variants:
        cfg = KernelConfig.from_json(v)
        if cfg not in out and prune(spec, kind, bucket, cfg, limits) is None:
            out.append(cfg)
    return out[:CANDIDATES]


def default_file(match: str, limits: DeviceLimits) -> dict[str, Any]:
    """The untuned file for a GPU: default config and candidate set per (spec, bucket)."""
    entries = {}
    for spec in shipped_specs():
        for bucket in BUCKETS:
            cands = candidate_set(spec, bucket, limits)
            entries[spec.tuning_key(kind_for(bucket), bucket)] = {
                "config": cands[0].to_json(), "us": None, "tuned": False,
                "candidates": [c.to_json() for c in cands]}
    return {"version": VERSION, "match": match, "tuned": False, "note": UNTUNED_NOTE,
            "gpus": {match: entries}}


def dumps(data: dict[str, Any]) -> str:
    """Deterministic text, one entry per line (the files stay diffable and small)."""
    head = {k: v for k, v in data.items() if k != "gpus"}
    lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(v, sort_keys=True)}," for k, v in
                     sorted(head.items())]
    lines.append(' "gpus": {')
    gpus = sorted(data["gpus"].items())
    for gi, (gpu, entries) in enumerate(gpus):
        lines.append(f"  {json.dumps(gpu)}: {{")
        items = sorted(entries.items())
        for i, (key, entry) in enumerate(items):
            comma = "," if i < len(items) - 1 else ""
            lines.append(f"   {json.dumps(key)}: {json.dumps(entry, sort_keys=True)}{comma}")
        lines.append("  }" + ("," if gi < len(gpus) - 1 else ""))
    lines += [" }", "}"]
    return "\n".join(lines) + "\n"


def as_tuned_configs(data: dict[str, Any]) -> TunedConfigs:
    return TunedConfigs.from_json(data)


def main(argv: list[str] | None = None) -> int:
    """`python -m qcompiler.codegen.tuned write-defaults`: rewrite the untuned files."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["write-defaults"]:
        print("usage: python -m qcompiler.codegen.tuned write-defaults", file=sys.stderr)
        return 2
    for match, name in GPUS.items():
        path = DIR / name
        if path.is_file() and is_tuned(path):
            print(f"kept {path} (tuned on a GPU)")
            continue
        limits = DeviceLimits(name=match, num_sms=132, smem_bytes=227 * 1024)
        path.write_text(dumps(default_file(match, limits)))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

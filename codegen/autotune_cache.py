"""Tuned launch configs per GPU name: a small JSON file that travels with the artifact.

Tuning a kernel means compiling and timing a few dozen configs (tens of seconds per shape), so
the winners are kept in `kernels/autotune.json` and reused on load. The file is keyed first by
GPU name (torch.cuda.get_device_name: a config tuned on an H100 says nothing about an A10) and
then by `KernelSpec.tuning_key` (format, N, K, group, options, kernel family, M bucket, tuning
version). Written deterministically (sorted keys) so re-saving an unchanged cache is a no-op.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from qcompiler.codegen.specialize import KernelConfig

FILE_NAME = "autotune.json"
VERSION = 1


class TunedConfigs:
    """gpu name -> tuning key -> (config, measured median microseconds)."""

    def __init__(self) -> None:
        self._by_gpu: dict[str, dict[str, tuple[KernelConfig, float | None]]] = {}

    def get(self, gpu: str, key: str) -> KernelConfig | None:
        hit = self._by_gpu.get(gpu, {}).get(key)
        return None if hit is None else hit[0]

    def put(self, gpu: str, key: str, config: KernelConfig, time_us: float | None = None) -> None:
        self._by_gpu.setdefault(gpu, {})[key] = (config, time_us)

    def merge(self, other: TunedConfigs) -> None:
        """Entries of `other` win (it is the newer measurement)."""
        for gpu, entries in other._by_gpu.items():
            self._by_gpu.setdefault(gpu, {}).update(entries)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_gpu.values())

    def to_json(self) -> dict[str, Any]:
        gpus = {}
        for gpu, entries in self._by_gpu.items():
            gpus[gpu] = {key: {"config": cfg.to_json(), "us": us}
                         for key, (cfg, us) in entries.items()}
        return {"version": VERSION, "gpus": gpus}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TunedConfigs:
        out = cls()
        if data.get("version") != VERSION:
            return out  # an older layout: retune rather than misread
        for gpu, entries in data.get("gpus", {}).items():
            for key, entry in entries.items():
                out.put(gpu, key, KernelConfig.from_json(entry["config"]), entry.get("us"))
        return out

    @classmethod
    def load(cls, path: str | Path) -> TunedConfigs:
        """The cache at `path`; empty if the file is missing. A damaged file is ignored with a
        warning (a cache must never stop a model from loading: it only costs a retune)."""
        p = Path(path)
        if not p.is_file():
            return cls()
        try:
            return cls.from_json(json.loads(p.read_text()))
        except (ValueError, KeyError, TypeError) as e:
            warnings.warn(f"qcompiler: ignoring unreadable tuned-config cache {p}: {e}",
                          stacklevel=2)
            return cls()

    def save(self, path: str | Path) -> None:
        """Write (merged over what the file already holds), atomically."""
        p = Path(path)
        merged = TunedConfigs.load(p)
        merged.merge(self)
        text = json.dumps(merged.to_json(), indent=1, sort_keys=True) + "\n"
        if p.is_file() and p.read_text() == text:
            return
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(p)

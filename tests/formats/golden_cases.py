"""Seeded quantization cases whose packed bytes are frozen in data/quantize_golden.json.

Why: the quantizers were rewritten for speed (issue 13: batched, no per-threshold loops, no
second search for the canonical encoding). Artifacts must not change for the same input, so the
SHA-256 of every QTensor part (codes, scales, zeros, meta, global scale) of these cases was
recorded from the code before the rewrite (commit 32bd5a3, run from a copy of that tree) and
test_golden.py compares against it.

    python tests/formats/golden_cases.py   # re-record: only when a change MEANS to alter bytes

Cases: every format, every distribution of fmt_helpers, three seeds, two group sizes, default
search and the other one, the scale options (pow2, pow2-row), custom specials, and calibration
activations x (the output-error objective).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fmt_helpers import DISTRIBUTIONS, weights  # noqa: E402
from qcompiler import formats  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "data" / "quantize_golden.json"
ROWS = 6
GROUPS = 3
SEEDS = (0, 1, 2)
MAGNITUDES = {"normal": 0.02, "student-t": 0.05, "sparse": 1.0, "outlier": 0.02,
              "mixed-groups": 1.0, "positive": 3.0}


def digest(q: formats.QTensor) -> str:
    """SHA-256 of every QTensor part. The sign of a zero float scale is not part of it: the old
    code gave an all-zero group's fp16 scale -0.0 or +0.0 depending on where the group fell in
    a vectorized max (SIMD body or scalar tail); the new code stores +0.0. Both decode to 0."""
    h = hashlib.sha256()
    for key, t in sorted(q.tensors().items()):
        t = t.detach()
        if t.is_floating_point():
            t = t + 0.0  # -0.0 -> +0.0, every other value unchanged
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _sizes(fmt: formats.Format) -> list[int | None]:
    sizes: list[int | None] = sorted({fmt.group_sizes[0], fmt.group_sizes[-1]})
    if fmt.default_group_size is None:
        sizes.append(None)
    return sizes


def cases() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(case id, format name, keyword arguments of a quantize call with `w` and maybe `x`)."""
    for name in formats.names():
        fmt = formats.get(name)
        opts = dict(fmt.options)
        searches = ("clip", "rtn")
        variants: list[dict[str, Any]] = [{}]
        if "scale" in opts:
            variants += [{"scale": "pow2"}, {"scale": "pow2-row"}]
        if "specials" in opts:
            variants.append({"specials": [3.0, -7.0, 12.0]})
        if "granularity" in opts:
            variants.append({"granularity": "tensor"})
        for g in _sizes(fmt):
            for search in searches:
                for var in variants:
                    for dist in DISTRIBUTIONS:
                        for seed in SEEDS:
                            var_id = json.dumps(var, sort_keys=True)
                            cid = f"{name}|g{g}|{search}|{var_id}|{dist}|{seed}"
                            yield cid, name, {"group_size": g, "search": search, "dist": dist,
                                              "seed": seed, "opts": var, "x": False}
                # the output-error objective, once per search and group size
                cid = f"{name}|g{g}|{search}|x"
                yield cid, name, {"group_size": g, "search": search, "dist": "student-t",
                                  "seed": 7, "opts": {}, "x": True}


def run_case(name: str, spec: dict[str, Any]) -> formats.QTensor:
    fmt = formats.get(name)
    g = spec["group_size"]
    k = (g or 64) * GROUPS
    w = weights(spec["seed"], ROWS, k, spec["dist"], MAGNITUDES[spec["dist"]])
    x = None
    if spec["x"]:
        gen = torch.Generator().manual_seed(spec["seed"] + 1000)
        x = torch.randn(24, k, generator=gen) * (1 + 4 * torch.rand(k, generator=gen))
    return fmt.quantize(w, group_size=g, search=spec["search"], x=x, **spec["opts"])


def record() -> dict[str, str]:
    torch.set_num_threads(1)
    return {cid: digest(run_case(name, spec)) for cid, name, spec in cases()}


if __name__ == "__main__":
    GOLDEN.parent.mkdir(exist_ok=True)
    out = record()
    GOLDEN.write_text(json.dumps(out, indent=0, sort_keys=True) + "\n")
    print(f"{len(out)} cases -> {GOLDEN}")

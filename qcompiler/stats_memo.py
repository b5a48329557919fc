"""Reuse calibration statistics across compiles of the same model on the same data (benches).

A bench that compiles one model once per weight format (bench/accuracy_smollm2.py) runs the
same calibration forwards for every format: GPTQ's Hessians, clip's and AWQ's row samples,
SmoothQuant's absmax are statistics of the fp model (after the passes before the calibrated
one: fold-norms, rotate), not of the format. Inside `with reuse():`, `iter_linear_stats`
(qcompiler/calibration.py, decorated with `memoized`) looks its result up by a key of
everything the result depends on, and computes it only on a miss:

- the graph's code and every tensor the graph reads (name, dtype, shape and a BLAKE2b digest of
  its bytes), so any transform of the weights (fold-norms, rotate, smooth) is a different key;
- the calibration batches' bytes and the calibration seed (the row reservoirs are seeded);
- the layers asked for and the flags (absmax, hessian, max_samples, budget).

So a hit returns exactly what the computation would (the test checks bit-equality), and a hit
hands out clones, so a pass that changes its statistics in place cannot change the store.
Off by default: the key costs one read of the weights, and the store holds whole results
(every chunk at once, up to `max_entries` results, least recently used dropped first).
Several processes (torch.distributed) never use the store: each rank sees only its share.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

_store: OrderedDict[str, list[dict[str, Any]]] | None = None
_limit = 0
_counts = {"hits": 0, "misses": 0}


@contextmanager
def reuse(max_entries: int = 4) -> Iterator[dict[str, int]]:
    """Keep statistics for reuse inside the block; yields the hit / miss counts."""
    global _store, _limit
    if max_entries < 1:
        raise ValueError("max_entries must be at least 1")
    saved = (_store, _limit)
    _store, _limit = OrderedDict(), max_entries
    _counts.update(hits=0, misses=0)
    try:
        yield _counts
    finally:
        _store, _limit = saved


def memoized(fn: Callable[..., Iterator[dict[str, Any]]]) -> Callable[..., Iterator[dict[str, Any]]]:
    """Wrap `iter_linear_stats(program, batches, layers=None, **flags)` (module docstring)."""

    @functools.wraps(fn)
    def wrapper(program: Any, batches: Any, layers: Any = None, **flags: Any
                ) -> Iterator[dict[str, Any]]:
        if _store is None or _distributed():
            yield from fn(program, batches, layers, **flags)
            return
        key = _key(program, batches, layers, flags)
        if key in _store:
            _counts["hits"] += 1
            _store.move_to_end(key)
        else:
            _counts["misses"] += 1
            _store[key] = [_clone(chunk) for chunk in fn(program, batches, layers, **flags)]
            while len(_store) > _limit:
                _store.popitem(last=False)
        for chunk in _store[key]:
            yield _clone(chunk)

    return wrapper


def _distributed() -> bool:
    from qcompiler.distributed import current

    return current() is not None


def _key(program: Any, batches: Any, layers: Any, flags: dict[str, Any]) -> str:
    h = hashlib.blake2b(digest_size=20)
    gm = program.gm
    h.update(gm.code.encode())
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = _fetch(gm, str(node.target))
            h.update(str(node.target).encode())
            if isinstance(value, torch.Tensor):
                _digest(h, value)
            else:
                h.update(repr(value).encode())
    for batch in batches:
        for t in batch if isinstance(batch, (tuple, list)) else (batch,):
            _digest(h, t) if isinstance(t, torch.Tensor) else h.update(repr(t).encode())
    ctx = flags.get("ctx")
    cfg = getattr(ctx, "calibration", None) if ctx is not None else None
    h.update(repr(getattr(cfg, "seed", 0)).encode())
    h.update(repr(None if layers is None else list(layers)).encode())
    h.update(repr(sorted((k, v) for k, v in flags.items() if k != "ctx")).encode())
    return h.hexdigest()


def _digest(h: Any, t: torch.Tensor) -> None:
    t = t.detach()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())


def _fetch(gm: torch.nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _clone(chunk: dict[str, Any]) -> dict[str, Any]:
    """A copy of a chunk; a tensor that several layers share (q/k/v's one Hessian) stays shared."""
    from dataclasses import replace

    copies: dict[int, torch.Tensor] = {}

    def copy(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in copies:
            copies[id(t)] = t.clone()
        return copies[id(t)]

    return {layer: replace(stats, **{f: copy(getattr(stats, f)) for f in
                                     ("absmax", "hessian", "samples")
                                     if isinstance(getattr(stats, f), torch.Tensor)})
            for layer, stats in chunk.items()}

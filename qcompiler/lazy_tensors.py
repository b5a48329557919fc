"""Streamed tensors: read a weight from its safetensors shard only when a pass needs it.

A streamed compile (see `qcompiler.driver.capture_streaming`) captures a big checkpoint with
zero-stride stand-ins and records, in `program.meta["lazy_tensors"]`, which shard and key holds
each parameter (a `qcompiler.layerwise.lazy_weight.LazySource` when transforms were folded into
it). `lower-datatype`, the artifact writer and the layer-wise runner read those tensors here, one
at a time or a block of rows at a time. This module sits below all of them (it needs only the
errors and the program), so none of them has to import the driver that runs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import torch

from qcompiler.errors import QCompilerError

if TYPE_CHECKING:
    from qcompiler.program import Program


def trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc `malloc_trim`).

    Streaming quantizes one layer at a time; the packed results stay while each layer's fp
    temporaries are freed, and glibc would keep those freed pages resident in the fragmented
    heap (RSS doubled in measurements). Trimming before each layer keeps RSS at what is live,
    for a few ms per layer.
    """
    global _LIBC
    if _LIBC is None:
        import ctypes
        import sys

        _LIBC = False
        if sys.platform.startswith("linux"):
            try:
                _LIBC = ctypes.CDLL(None)
                _LIBC.malloc_trim  # noqa: B018  (not glibc: no trimming)
            except (OSError, AttributeError):
                _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: Any = None


def load_lazy_tensor(program: Program, name: str, *, keep: bool = True) -> torch.Tensor:
    """Read a streamed tensor from its shard, in the stand-in's dtype; `keep` stores it."""
    trim_heap()
    entry = program.meta["lazy_tensors"][name]
    shard, key = entry
    standin = program.get_tensor(name)
    finish = getattr(entry, "finish", None)  # a layer-wise compile's folded transforms
    expected = tuple(entry.root_shape) if finish else tuple(standin.shape)
    _check_shape(shard, key, expected)
    value = read_source(shard, key)
    value = finish(value) if finish else value.to(standin.dtype)
    if keep:
        program.set_tensor(name, value)
        del program.meta["lazy_tensors"][name]
    return value


def iter_lazy_tensor(program: Program, name: str,
                     block_bytes: int = 16 << 20) -> Iterator[torch.Tensor]:
    """A streamed tensor as row blocks in the stand-in's dtype (bounded memory)."""
    trim_heap()
    entry = program.meta["lazy_tensors"][name]
    shard, key = entry
    standin = program.get_tensor(name)
    finish = getattr(entry, "finish", None)  # a layer-wise compile's folded transforms
    if finish is not None and not entry.by_rows:
        yield load_lazy_tensor(program, name, keep=False)
        return
    shape = tuple(entry.root_shape) if finish else tuple(standin.shape)
    _check_shape(shard, key, shape)
    row_bytes = max(1, standin[0].numel() * 4) if standin.dim() > 1 else 1
    rows = max(1, block_bytes // row_bytes) if standin.dim() > 1 else max(shape or (1,))
    total = shape[0] if shape else 1
    for start in range(0, total, rows):
        block = read_source(shard, key, start, start + rows) if shape else read_source(shard, key)
        yield finish(block) if finish else block.to(standin.dtype)


# ---- sources: one checkpoint tensor, or several read as one ------------------------------------
# A streamed tensor's entry is `[shard, key]`. Transformers fuses some checkpoint tensors when it
# loads them (MoE experts: `experts.<e>.w1`, `w3` -> `experts.gate_up_proj [E, 2I, H]`;
# qcompiler/checkpoint_keys.py), so an entry may also name several tensors, read as one:
#   key: str                  one tensor of `shard`;
#   key: tuple[str, ...]      those tensors concatenated along dim 0 (`shard` a tuple alike);
#   key: tuple[tuple, ...]    each such concatenation, stacked along a new dim 0.
# Reading rows [start, stop) of dim 0 reads only the parts that hold them.
def read_source(shard: Any, key: Any, start: int | None = None,
                stop: int | None = None) -> torch.Tensor:
    """The tensor an entry names (rows [start, stop) of dim 0 when given)."""
    if isinstance(key, str):
        return _read_one(shard, key, start, stop)
    if key and isinstance(key[0], str):  # a concatenation along dim 0
        pieces, offset = [], 0
        for s, k in zip(shard, key):
            n = source_shape(s, k)[0]
            lo = 0 if start is None else min(max(start - offset, 0), n)
            hi = n if stop is None else min(max(stop - offset, 0), n)
            if hi > lo:
                pieces.append(_read_one(s, k, lo, hi) if (lo, hi) != (0, n)
                              else _read_one(s, k, None, None))
            offset += n
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    chosen = range(len(key))[slice(start, stop)]  # a stack: rows are whole members
    return torch.stack([read_source(shard[i], key[i]) for i in chosen])


def source_shape(shard: Any, key: Any) -> tuple[int, ...]:
    """The shape of what an entry names, from the shards' headers (nothing read)."""
    if isinstance(key, str):
        return tuple(_open_slice(shard, key, lambda part: part.get_shape()))
    shapes = [source_shape(s, k) for s, k in zip(shard, key)]
    if any(len(x) != len(shapes[0]) or x[1:] != shapes[0][1:] for x in shapes):
        raise QCompilerError(f"{describe_source(shard, key)} have shapes {shapes} that do not "
                             "fit together; the checkpoint does not match its config.json")
    if isinstance(key[0], str):
        return (sum(x[0] for x in shapes), *shapes[0][1:])
    if any(x != shapes[0] for x in shapes):
        raise QCompilerError(f"{describe_source(shard, key)} have different shapes {shapes}; "
                             "the checkpoint does not match its config.json")
    return (len(shapes), *shapes[0])


def source_dtype(shard: Any, key: Any) -> str | None:
    """The safetensors dtype name ("BF16", "F32", ...) of what an entry names; None when its
    parts differ."""
    if isinstance(key, str):
        return str(_open_slice(shard, key, lambda part: part.get_dtype()))
    names = {source_dtype(s, k) for s, k in zip(shard, key)}
    return names.pop() if len(names) == 1 else None


def describe_source(shard: Any, key: Any) -> str:
    """`key in shard`, or the tensors of a fused entry, for messages."""
    if isinstance(key, str):
        return f"{key} in {shard}"
    flat = [k for k in _leaves(key)]
    return f"{flat[0]} ... {flat[-1]} ({len(flat)} tensors read as one)"


def _leaves(key: Any) -> Iterator[str]:
    if isinstance(key, str):
        yield key
    else:
        for k in key:
            yield from _leaves(k)


def _check_shape(shard: Any, key: Any, expected: tuple[int, ...]) -> None:
    got = source_shape(shard, key)
    if got != expected:
        raise QCompilerError(f"{describe_source(shard, key)} has shape {got}, the model "
                             f"expects {expected}; the checkpoint does not match its config.json")


def _open_slice(shard: str, key: str, use: Any) -> Any:
    from safetensors import safe_open

    try:
        with safe_open(shard, framework="pt") as f:
            return use(f.get_slice(key))
    except Exception as e:  # a shard that changed or broke since capture
        raise QCompilerError(f"cannot read {key} from {shard}: {str(e).splitlines()[0]}") from None


def _read_one(shard: str, key: str, start: int | None, stop: int | None) -> torch.Tensor:
    from safetensors import safe_open

    try:
        with safe_open(shard, framework="pt") as f:
            if start is None and stop is None:
                return f.get_tensor(key)
            return f.get_slice(key)[start:stop]
    except Exception as e:  # a shard that changed or broke since capture
        raise QCompilerError(f"cannot read {key} from {shard}: {str(e).splitlines()[0]}") from None


def materialize(program: Program) -> Program:
    """Read every streamed tensor, so the program can run in memory."""
    for name in list(program.meta.get("lazy_tensors") or {}):
        if program.has_tensor(name):
            load_lazy_tensor(program, name, keep=True)
    program.meta.pop("lazy_tensors", None)
    return program

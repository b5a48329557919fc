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
    from safetensors import safe_open

    trim_heap()
    entry = program.meta["lazy_tensors"][name]
    shard, key = entry
    standin = program.get_tensor(name)
    finish = getattr(entry, "finish", None)  # a layer-wise compile's folded transforms
    expected = tuple(entry.root_shape) if finish else tuple(standin.shape)
    try:
        with safe_open(shard, framework="pt") as f:
            value = f.get_tensor(key)
    except Exception as e:  # a shard that changed or broke since capture
        raise QCompilerError(f"cannot read {key} from {shard}: {str(e).splitlines()[0]}") from None
    if tuple(value.shape) != expected:
        raise QCompilerError(f"{key} in {shard} has shape {tuple(value.shape)}, the model "
                             f"expects {expected}; the checkpoint does not match "
                             "its config.json")
    value = finish(value) if finish else value.to(standin.dtype)
    if keep:
        program.set_tensor(name, value)
        del program.meta["lazy_tensors"][name]
    return value


def iter_lazy_tensor(program: Program, name: str,
                     block_bytes: int = 16 << 20) -> Iterator[torch.Tensor]:
    """A streamed tensor as row blocks in the stand-in's dtype (bounded memory)."""
    from safetensors import safe_open

    trim_heap()
    entry = program.meta["lazy_tensors"][name]
    shard, key = entry
    standin = program.get_tensor(name)
    finish = getattr(entry, "finish", None)  # a layer-wise compile's folded transforms
    if finish is not None and not entry.by_rows:
        yield load_lazy_tensor(program, name, keep=False)
        return
    shape = tuple(entry.root_shape) if finish else tuple(standin.shape)
    row_bytes = max(1, standin[0].numel() * 4) if standin.dim() > 1 else 1
    rows = max(1, block_bytes // row_bytes) if standin.dim() > 1 else max(shape or (1,))
    total = shape[0] if shape else 1
    for start in range(0, total, rows):
        with safe_open(shard, framework="pt") as f:
            part = f.get_slice(key)
            if tuple(part.get_shape()) != shape:
                raise QCompilerError(f"{key} in {shard} has shape {tuple(part.get_shape())}, the "
                                     f"model expects {shape}; the checkpoint does not match "
                                     "its config.json")
            block = part[start:start + rows] if shape else f.get_tensor(key)
        yield finish(block) if finish else block.to(standin.dtype)


def materialize(program: Program) -> Program:
    """Read every streamed tensor, so the program can run in memory."""
    for name in list(program.meta.get("lazy_tensors") or {}):
        if program.has_tensor(name):
            load_lazy_tensor(program, name, keep=True)
    program.meta.pop("lazy_tensors", None)
    return program

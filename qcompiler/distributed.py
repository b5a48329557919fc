"""Calibration over several processes (torch.distributed): who does what, and the collectives.

    torchrun --nproc-per-node 2 -m qcompiler.cli.qcompile MODEL -p razer4-max -o OUT
    qcompile MODEL -p razer4-max -o OUT --nproc 2          # the same, launched by qcompile

Every process (rank) captures the model and runs the same pipeline. Three things are split
(docs/DISTRIBUTED.md has the whole story):
- the calibration sequences: rank r runs sequences r, r+W, r+2W, ... (`share`); sequences sampled
  from the model are sampled the same way and exchanged (token ids only);
- the statistics are then combined where every calibrated pass gets them
  (qcompiler/calibration.py, `iter_linear_stats`): Hessians and token counts summed, absmax by
  max, the row samples merged by their seeded keys (the same rows a single process keeps);
- the per-layer searches (GPTQ, clip, pot-refine, AWQ/AQAS scales): `map_layers` gives each rank a
  balanced share of the layers, and every rank receives every result, so all ranks keep the same
  program; rank 0 alone writes the artifact.

Every result that crosses ranks is computed by one rank and copied bit for bit, so the ranks
never disagree. Exchanged data is tensors in a small header+bytes format of our own (`encode`),
never pickle. A collective that fails because another rank died raises `PeerFailed`: that rank
prints its own error; the others stop quietly (qcompiler/launch.py shows exactly one line).

Backends: gloo on CPU, nccl when every local rank has a GPU (`QCOMPILE_DIST_BACKEND` overrides).
With nccl the statistics travel through the rank's GPU (the compile itself stays where it is).
"""

from __future__ import annotations

import json
import os
import struct
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import torch

from qcompiler.errors import QCompilerError

T = TypeVar("T")
TIMEOUT_MINUTES = 60  # a rank waits this long for the others at a collective
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool,
    torch.float16, torch.bfloat16, torch.float32, torch.float64)}


class PeerFailed(QCompilerError):
    """A collective failed: another rank stopped (it reports its own error)."""


@dataclass(frozen=True)
class Group:
    """This process's place in the run: rank, world size and where collectives run."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_writer(self) -> bool:
        return self.rank == 0


def current() -> Group | None:
    """The process group when more than one process calibrates, else None (one process)."""
    dist = _dist()
    if dist is None or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    backend = dist.get_backend()
    device = (torch.device("cuda", torch.cuda.current_device()) if backend == "nccl"
              else torch.device("cpu"))
    return Group(dist.get_rank(), dist.get_world_size(), device)


def is_writer() -> bool:
    """Whether this process writes output (rank 0, or the only process)."""
    group = current()
    return group is None or group.is_writer


def init_from_env() -> Group | None:
    """Join the process group torchrun (or `qcompile --nproc`) described in the environment
    (WORLD_SIZE > 1, RANK, MASTER_ADDR/PORT); nothing when run as one process."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) < 2:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        backend = os.environ.get("QCOMPILE_DIST_BACKEND") or (
            "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= local_world
            else "gloo")
        if backend not in ("gloo", "nccl"):
            raise QCompilerError(f"QCOMPILE_DIST_BACKEND={backend} is not supported; use gloo "
                                 "(CPU) or nccl (one GPU per process)")
        try:
            if backend == "nccl":
                torch.cuda.set_device(local)
            dist.init_process_group(backend, timeout=timedelta(minutes=TIMEOUT_MINUTES))
        except (RuntimeError, ValueError, KeyError) as e:
            raise QCompilerError(f"cannot join the process group ({backend}): "
                                 f"{_first_line(e)}; start with torchrun or qcompile --nproc N"
                                 ) from None
    return current()


def finish() -> None:
    """Leave the process group (end of a run)."""
    dist = _dist()
    if dist is not None and dist.is_initialized():
        dist.destroy_process_group()


# ---- who does what ------------------------------------------------------------------------------
def share(count: int, group: Group | None = None) -> list[int]:
    """The calibration sequences this rank runs: r, r+W, r+2W, ... (all of them alone)."""
    group = group if group is not None else current()
    if group is None:
        return list(range(count))
    return list(range(group.rank, count, group.world))


def assign(costs: Sequence[float], world: int) -> list[int]:
    """Owner rank of each item: largest first onto the least loaded rank (ties: lower index,
    lower rank), so every rank computes the same assignment."""
    load = [0.0] * world
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += costs[i]
    return owner


def map_layers(items: Sequence[T], cost: Callable[[T], float],
               compute: Callable[[T], dict[str, torch.Tensor]],
               progress: Callable[..., Iterable[T]] | None = None,
               desc: str = "") -> Iterator[tuple[T, dict[str, torch.Tensor]]]:
    """(item, compute(item)) for every item, in order. One process: computed one at a time as
    iterated. Several: each rank computes its share (`assign` by cost), then every result is
    broadcast by its owner, so every rank yields every result, bit for bit the owner's."""
    progress = progress or (lambda xs, **_: xs)
    group = current()
    if group is None:
        for item in progress(list(items), total=len(items), desc=desc):
            yield item, compute(item)
        return
    owner = assign([float(cost(it)) for it in items], group.world)
    mine = [i for i, r in enumerate(owner) if r == group.rank]
    results: dict[int, dict[str, torch.Tensor]] = {}
    for i in progress(mine, total=len(mine), desc=desc):
        results[i] = compute(items[i])
    for r in range(group.world):
        sent = {f"{i}/{k}": v for i in mine for k, v in results[i].items()} \
            if r == group.rank else None
        got = broadcast_tensors(sent, r, group)
        for key, value in got.items():
            i, name = key.split("/", 1)
            results.setdefault(int(i), {})[name] = value
    for i, item in enumerate(items):
        yield item, results.pop(i, {})


def map_qtensors(items: Sequence[T], cost: Callable[[T], float], quantize: Callable[[T], Any],
                 progress: Callable[..., Iterable[T]] | None = None,
                 desc: str = "") -> Iterator[tuple[T, Any]]:
    """`map_layers` for searches that return a QTensor (a weight plan), or a (QTensor, dict of
    ints) pair: (item, that result) in order. One process: quantize(item) as is. Several: the
    QTensor travels as its tensors plus a JSON header (format, shape, group size, options, the
    ints), so every rank records the same plan."""
    if current() is None:
        progress = progress or (lambda xs, **_: xs)
        for item in progress(list(items), total=len(items), desc=desc):
            yield item, quantize(item)
        return
    for item, parts in map_layers(items, cost, lambda it: _qtensor_parts(quantize(it)),
                                  progress, desc):
        yield item, _qtensor_from(parts)


def _qtensor_parts(result: Any) -> dict[str, torch.Tensor]:
    qt, extra = result if isinstance(result, tuple) else (result, None)
    head = {"format": qt.format, "shape": list(qt.shape), "group": qt.group_size,
            "opts": qt.opts, "extra": extra}
    raw = json.dumps(head).encode()
    return {**qt.tensors(), "qtensor.json": torch.frombuffer(bytearray(raw), dtype=torch.uint8)}


def _qtensor_from(parts: dict[str, torch.Tensor]) -> Any:
    from qcompiler.formats.qtensor import QTensor

    parts = dict(parts)
    head = json.loads(parts.pop("qtensor.json").numpy().tobytes().decode())
    qt = QTensor.from_tensors(head["format"], tuple(head["shape"]), head["group"], parts,
                              head["opts"])
    return qt if head["extra"] is None else (qt, head["extra"])


# ---- collectives --------------------------------------------------------------------------------
def all_reduce(t: torch.Tensor, op: str, group: Group) -> torch.Tensor:
    """`t` summed ("sum") or maxed ("max") over the ranks; the same bits on every rank."""
    import torch.distributed as dist

    red = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
    work = t.to(group.device).contiguous()
    _collective(dist.all_reduce, work, red)
    return work.to(t.device) if work is not t else t


def broadcast_tensors(tensors: dict[str, torch.Tensor] | None, src: int,
                      group: Group) -> dict[str, torch.Tensor]:
    """`tensors` of rank `src`, on every rank (encoded by `encode`, no pickle)."""
    import torch.distributed as dist

    blob = encode(tensors) if group.rank == src else None
    size = torch.tensor([0 if blob is None else blob.numel()], dtype=torch.int64,
                        device=group.device)
    _collective(dist.broadcast, size, src)
    if blob is None:
        blob = torch.empty(int(size.item()), dtype=torch.uint8)
    work = blob.to(group.device)
    _collective(dist.broadcast, work, src)
    return decode(work.cpu()) if group.rank != src else dict(tensors or {})


def gather_tensors(tensors: dict[str, torch.Tensor], group: Group
                   ) -> list[dict[str, torch.Tensor]]:
    """Every rank's `tensors`, in rank order, on every rank."""
    return [broadcast_tensors(tensors if r == group.rank else None, r, group)
            for r in range(group.world)]


def encode(tensors: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """Tensors as one uint8 tensor: 8-byte header length, JSON header, raw bytes."""
    tensors = tensors or {}
    header: dict[str, Any] = {}
    parts: list[torch.Tensor] = []
    offset = 0
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in _DTYPES:
            raise QCompilerError(f"cannot send a {t.dtype} tensor between processes")
        raw = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
        header[name] = [dtype, list(t.shape), offset, raw.numel()]
        parts.append(raw)
        offset += raw.numel()
    head = json.dumps(header).encode()
    prefix = torch.frombuffer(bytearray(struct.pack("<Q", len(head)) + head), dtype=torch.uint8)
    return torch.cat([prefix, *parts]) if parts else prefix


def decode(blob: torch.Tensor) -> dict[str, torch.Tensor]:
    """The inverse of `encode` (copies: nothing aliases the buffer)."""
    data = blob.contiguous()
    (length,) = struct.unpack("<Q", data[:8].numpy().tobytes())
    header = json.loads(data[8:8 + length].numpy().tobytes().decode())
    base = 8 + length
    out: dict[str, torch.Tensor] = {}
    for name, (dtype, shape, offset, nbytes) in header.items():
        raw = data[base + offset:base + offset + nbytes].clone()
        out[name] = raw.view(_DTYPES[dtype]).reshape(shape) if nbytes else \
            torch.empty(shape, dtype=_DTYPES[dtype])
    return out


def _collective(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except RuntimeError as e:  # gloo/nccl: a peer closed its connection or timed out
        raise PeerFailed(f"another process of this run stopped ({_first_line(e)[:120]}); "
                         "its error says why") from None


def _dist() -> Any:
    mod = sys.modules.get("torch.distributed")
    if mod is None or not mod.is_available():
        return None
    return mod


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

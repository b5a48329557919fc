"""A recording stand-in for torch.cuda's graph API, so the capture path runs on the CPU.

`install(monkeypatch)` replaces torch.cuda.CUDAGraph / graph / Stream / stream /
current_stream and lets qcompiler.cuda_graphs treat the CPU as graph-capable. While a
`torch.cuda.graph(g)` block runs, every torch op is recorded (op, arguments, result) into `g`,
as a real capture records kernels with their buffer addresses; `g.replay()` re-runs the ops on
the same tensor objects and writes each result into the tensor recorded at capture, so a
replay reads whatever the static buffers hold now, and nothing else: exactly the contract of a
CUDA graph. Ops that synchronize with the host (`.item()`, `nonzero`, ...) raise, as they
would make a real capture fail, and `torch.cuda.is_current_stream_capturing()` is True inside
the block, as on a real capturing stream.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from qcompiler import cuda_graphs

SYNCING = {"_local_scalar_dense", "item", "nonzero", "masked_select", "unique", "_unique2",
           "equal", "is_nonzero"}


class FakeGraph:
    created: list[FakeGraph] = []

    def __init__(self):
        self.ops: list[tuple] = []
        self.replays = 0
        FakeGraph.created.append(self)

    def replay(self) -> None:
        for func, args, kwargs, recorded in self.ops:
            out = func(*args, **kwargs)
            new, _ = tree_flatten(out)
            old, _ = tree_flatten(recorded)
            for o, n in zip(old, new):
                tensors = isinstance(o, torch.Tensor) and isinstance(n, torch.Tensor)
                if tensors and not _aliases(o, n):
                    o.copy_(n)
        self.replays += 1


def _aliases(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


class _Recorder(TorchDispatchMode):
    def __init__(self, graph: FakeGraph):
        super().__init__()
        self.graph = graph

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket.__name__ in SYNCING:
            raise AssertionError(f"aten.{func.overloadpacket.__name__} synchronizes with the host: "
                                 "a CUDA graph capture would fail here")
        out = func(*args, **kwargs)
        self.graph.ops.append((func, args, kwargs, out))
        return out


_CAPTURING = [False]


@contextlib.contextmanager
def fake_graph(graph: FakeGraph, *args, **kwargs):
    assert not graph.ops, "a graph is captured once"
    _CAPTURING[0] = True
    try:
        with _Recorder(graph):
            yield
    finally:
        _CAPTURING[0] = False


class FakeStream:
    def __init__(self, *args, **kwargs):
        self.waited = 0

    def wait_stream(self, other) -> None:
        self.waited += 1


def install(monkeypatch) -> type[FakeGraph]:
    FakeGraph.created = []
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", fake_graph)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: _CAPTURING[0])
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: FakeStream())
    monkeypatch.setattr(cuda_graphs, "device_supports_graphs", lambda device: True)
    return FakeGraph

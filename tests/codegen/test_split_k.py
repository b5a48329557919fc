"""Split-K in one launch (codegen/epilogue.py): workspace, per-tile counters, last split reduces.

The interpreter runs a grid's programs one after another, so besides the results these tests
check the protocol's invariants: every counter is 0 again after a launch, the workspace may hold
anything (NaN) beforehand, the result does not depend on which split arrives last (programs run
in shuffled orders give bitwise the same output), the workspace is allocated once and reused,
and a launch issues no torch op but the output's allocation (no zero-fill, no cast back).
"""

from __future__ import annotations

import random

import pytest
import torch
import triton.runtime.interpreter as interp
from torch.utils._python_dispatch import TorchDispatchMode

from kernel_helpers import activations, assert_matches, quantized
from qcompiler.codegen import runtime
from qcompiler.codegen.specialize import make_spec

N, K = 40, 256
# (format, group, kernel, M, config): the fp32 GEMV, the fp16x2 GEMV (M = 1) and the GEMM
CASES = [
    ("razer4", 32, "gemv", 3, dict(BLOCK_M=4, BLOCK_N=16, BLOCK_K=32, SPLIT_K=4)),
    ("int4", 64, "gemv", 1, dict(BLOCK_M=1, BLOCK_N=16, BLOCK_K=64, SPLIT_K=3)),
    ("nvfp4", 16, "gemm", 9, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=64, SPLIT_K=2)),
]


def _cfg(extra: dict) -> dict:
    return dict(dict(GROUP_M=1, num_warps=4, num_stages=2), **extra)


def _setup(fmt: str, g: int, m: int, seed: int = 0):
    q, w = quantized(fmt, N, K, g, seed=seed)
    module = runtime.module_for(make_spec(fmt, N, K, g))
    return module, q.tensors(), w, activations(m, K, seed=seed + 1)


def _workspace(module, x, cfg):
    """The cached workspace and counters of a CASES launch (its BLOCK_M is the kernel's: the
    M bucket for the fp32 GEMV, 1 for the fp16x2 one, BLOCK_M for the GEMM)."""
    m_tiles = -(-x.shape[0] // cfg["BLOCK_M"])
    tiles = -(-N // cfg["BLOCK_N"]) * m_tiles
    return module.split_k_workspace(x.device, tiles, cfg["SPLIT_K"], cfg["BLOCK_M"],
                                    cfg["BLOCK_N"])


@pytest.mark.parametrize("fmt,g,kind,m,extra", CASES)
def test_matches_reference_and_no_split(fmt, g, kind, m, extra) -> None:
    module, tensors, w, x = _setup(fmt, g, m)
    fn = getattr(module, kind)
    bias = activations(1, N, seed=9)[0]
    cfg = _cfg(extra)
    y = fn(x, tensors, bias, cfg)
    assert_matches(y, x, w, bias, what=f"{fmt} {kind} split {extra['SPLIT_K']}")
    one = fn(x, tensors, bias, dict(cfg, SPLIT_K=1))
    # same products, summed in another order: within a few fp16 ulps of the unsplit result
    assert torch.allclose(y.float(), one.float(), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("fmt,g,kind,m,extra", CASES)
def test_counters_reset_and_workspace_needs_no_zero_fill(fmt, g, kind, m, extra) -> None:
    module, tensors, w, x = _setup(fmt, g, m, seed=3)
    fn = getattr(module, kind)
    cfg = _cfg(extra)
    first = fn(x, tensors, None, cfg)
    ws, locks = _workspace(module, x, cfg)
    assert ws.numel() and int(locks.abs().sum()) == 0  # the launch left every counter at 0
    ws.fill_(float("nan"))  # garbage from an earlier launch must not matter
    again = fn(x, tensors, None, cfg)
    assert torch.equal(first, again)
    assert int(locks.abs().sum()) == 0
    assert _workspace(module, x, cfg)[0].data_ptr() == ws.data_ptr()  # allocated once, reused


@pytest.mark.parametrize("fmt,g,kind,m,extra", CASES)
def test_any_arrival_order_gives_the_same_bits(fmt, g, kind, m, extra, monkeypatch) -> None:
    """Programs run in shuffled orders, so every split is the last to arrive for some tile."""
    module, tensors, w, x = _setup(fmt, g, m, seed=5)
    fn = getattr(module, kind)
    cfg = _cfg(extra)
    bias = activations(1, N, seed=7)[0]
    want = fn(x, tensors, bias, cfg)
    builder = interp.interpreter_builder
    set_dim, set_idx = builder.set_grid_dim, builder.set_grid_idx
    state: dict = {}

    def shuffled_dim(nx, ny, nz):
        state.update(dims=(nx, ny, nz), order=list(range(nx * ny * nz)), i=0)
        state["rng"].shuffle(state["order"])
        set_dim(nx, ny, nz)

    def shuffled_idx(x_, y_, z_):
        _, ny, nz = state["dims"]
        flat = state["order"][state["i"]]
        state["i"] += 1
        state["seen"].add(flat)
        set_idx(flat // (ny * nz), flat // nz % ny, flat % nz)

    monkeypatch.setattr(builder, "set_grid_dim", shuffled_dim)
    monkeypatch.setattr(builder, "set_grid_idx", shuffled_idx)
    for seed in range(3):
        state.update(rng=random.Random(seed), seen=set())
        got = fn(x, tensors, bias, cfg)
        assert state["seen"] == set(range(len(state["order"])))  # every program ran once
        assert torch.equal(got, want), seed
        assert int(_workspace(module, x, cfg)[1].abs().sum()) == 0


class _Ops(TorchDispatchMode):
    """Records the torch ops the host code runs (not the interpreter's own copies inside the
    kernel call, while `in_kernel` is set)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self.in_kernel = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.in_kernel:
            self.ops.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


def test_one_launch_no_zero_fill_no_cast() -> None:
    """After the first call (which allocates the workspace), a split-K linear creates its
    output and runs the kernel: no zeros/fill, no dtype conversion."""
    fmt, g, kind, m, extra = CASES[0]
    module, tensors, w, x = _setup(fmt, g, m)
    cfg = _cfg(extra)
    module.gemv(x, tensors, None, cfg)
    calls = []
    kernel = module.GEMV_FP32_KERNEL
    mode = _Ops()

    class Counting:
        def __getitem__(self, grid):
            calls.append(grid)

            def launch(*args, **kwargs):
                mode.in_kernel = True
                try:
                    return kernel[grid](*args, **kwargs)
                finally:
                    mode.in_kernel = False
            return launch

    module.GEMV_FP32_KERNEL = Counting()
    try:
        with mode:
            y = module.gemv(x, tensors, None, cfg)
    finally:
        module.GEMV_FP32_KERNEL = kernel
    assert calls == [(-(-N // 16), 4)]  # one launch: (tiles, splits)
    assert y.dtype == x.dtype
    assert mode.ops == ["empty"], mode.ops  # the output; no zero-fill, no cast back

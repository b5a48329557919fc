"""Whether RaZeR's search may run its C loop (native/razer_search.c) on this machine.

The C loop must compute the torch loop's (razer_search.py) errors bit for bit, not merely pick
the same candidates on a few groups: a different summation order, or a compiler that fuses a
multiply-add, changes an error by an ulp and a choice only at a near-tie, which small inputs
rarely contain. So `matches_torch` compares the coarse loop's best errors (with their ratio and
special value) and the local steps' errors of every group, then the searches' results, on
seeded heavy-tailed blocks of every supported group size: RaZeR's and a custom special set,
fp16 scales with the clip search, NVFP4-RaZeR's E3M3 scales with recover ratios and banned top
blocks, already-quantized (exact) values, all-zero and padded groups, one group per row.

Why at run time: the C loop reproduces torch's own summation orders, which depend on how torch
was built and on the CPU it dispatches for. The check takes about half a second; a pass leaves
a marker beside the library (native/razer.py `check_marker`, keyed by the torch build and the
torch loop's sources), so it runs once per machine, not per process. A failed check logs a
warning and the torch loop runs: the bytes never depend on which loop ran.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from qcompiler.formats import razer_search as rs
from qcompiler.formats.fp4 import FP4_GRID
from qcompiler.formats.fp8 import E3M3
from qcompiler.formats.native import razer as native
from qcompiler.formats.nvfp4 import RECOVER_RATIOS, global_scale, top_blocks, two_level_snap
from qcompiler.formats.razer_search import special_ranges
from qcompiler.formats.scale_search import to_fp16_scale

log = logging.getLogger(__name__)

SPECIAL_SETS = ((5.0, -5.0, 8.0, -8.0), (-7.5, -12.0, 2.5, 9.0))
# the torch loop and this check: a change to any of them runs the check again
REFERENCE_SOURCES = ("razer_search.py", "fastround.py", "grid.py", "scale_search.py",
                     "razer_check.py", "native/razer.py")

_lock = threading.Lock()
_state: dict[str, ctypes.CDLL | None] = {}
_local = threading.local()


def checked_lib() -> ctypes.CDLL | None:
    """The C loop if it exists here and matches the torch loop, else None (the torch loop)."""
    if getattr(_local, "torch_only", False):
        return None
    with _lock:
        if "lib" not in _state:
            _state["lib"] = _load_checked()
        return _state["lib"]


@contextmanager
def torch_loop() -> Iterator[None]:
    """Run the torch loop even where the C loop is available (the reference; tests)."""
    before = getattr(_local, "torch_only", False)
    _local.torch_only = True
    try:
        yield
    finally:
        _local.torch_only = before


def _load_checked() -> ctypes.CDLL | None:
    so = native.load()
    if so is None:
        return None
    root = Path(__file__).resolve().parent
    marker = native.check_marker(so, [root / name for name in REFERENCE_SOURCES])
    if marker.exists():
        return so
    try:
        ok = matches_torch(so)
    except Exception as exc:  # noqa: BLE001 - any failure means: do not use it
        log.warning("native RaZeR search failed its self-check (%s): using the torch loop", exc)
        return None
    if not ok:
        log.warning("native RaZeR search differs from torch on this machine: using the torch "
                    "loop (same bytes, slower)")
        return None
    try:
        marker.touch()
    except OSError:
        pass  # a read-only cache: the check runs again in the next process
    return so


def matches_torch(so: ctypes.CDLL) -> bool:
    """True when `so` computes every checked error and result exactly as the torch loop."""
    for gs in native.GROUP_SIZES:
        for k, specials in enumerate(SPECIAL_SETS):
            wg = _weights(gs + k, gs)
            absmax = wg.abs().amax()
            snap = two_level_snap(E3M3, global_scale(absmax, E3M3.max_value))
            nvfp4_rules = ("clip", snap, (*RECOVER_RATIOS,), top_blocks(wg, absmax), True)
            s, _ = rs.search(wg, specials, special_ranges(specials), 4, *nvfp4_rules)
            exact = FP4_GRID.round_values(wg / s.clamp(min=1e-30)) * s
            big = _weights(gs + 7 * k, gs, rows=4096 // gs, groups=32)  # 128..2048 groups
            runs = [(wg, ("clip", to_fp16_scale, (), None, True)),
                    (wg.reshape(-1, 1, gs), ("rtn", to_fp16_scale, (), None, False)),
                    (wg, nvfp4_rules),
                    (exact, ("clip", snap, (*RECOVER_RATIOS,),
                             top_blocks(exact, exact.abs().amax()), True)),
                    (big, ("clip", to_fp16_scale, (), None, True))]
            for x, args in runs:
                if not _same_loops(so, x, specials, *args):
                    return False
                ranges = special_ranges(specials)
                got = rs.search(x, specials, ranges, 4, *args, lib=so)
                want = rs.search(x, specials, ranges, 4, *args)
                if not (torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])):
                    return False
    return True


def _weights(seed: int, gs: int, rows: int = 5, groups: int = 7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, groups, gs, generator=gen) / torch.rand(rows, groups, gs,
                                                                 generator=gen).add(0.05)
    w[0, 0] = 0.0  # an all-zero group
    w[1, 1, :3] = w[1, 1, :3].abs() * 50  # a far positive extreme
    w[2, 3, 1] = -w.abs().max() * 2  # the tensor's absmax: a banned top block
    return w  # 5 x 7 = 35 groups: not a multiple of the 16 lanes, so padding is exercised


def _same_loops(so, wg, specials, search_mode, snap, extra, unclipped, elementwise) -> bool:
    ranges = special_ranges(specials)
    n, g, _ = wg.shape
    c = rs.Candidates(wg, ranges, 4, search_mode, snap, extra, elementwise)
    w_lanes = native.lanes_weights(wg)
    got = rs.coarse_native(so, w_lanes, specials, ranges, c, unclipped)
    blk = rs.Block(wg, c.ext)
    want = rs.coarse_torch(blk, specials, ranges, c, unclipped)
    if not (_bits_equal(got.err, want.err) and torch.equal(got["meta"], want["meta"])
            and torch.equal(got["ratio"], want["ratio"])):
        return False
    special = torch.tensor(specials, dtype=torch.float32)[want["meta"]].unsqueeze(-1)
    # at 0.6 x the plain scale many elements pass the special values: about 6 % of the groups'
    # errors change if the compiler fuses dq2 - d * d into one multiply-add
    for factor in (0.6, 0.97, 1.0):
        s = snap(c.plain * factor)
        if not _bits_equal(rs.refine_native(so, w_lanes, n * g)(s, special),
                           rs.refine_torch(wg, blk, special)(s, special)):
            return False
    return True


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))

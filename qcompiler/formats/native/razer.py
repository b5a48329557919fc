"""ctypes bindings of razer_search.c: RaZeR's weight-MSE search over groups in C.

razer_search.py decides what to search (ratios, layers of scales, bans) and keeps the torch
loop; this module loads the library (build.py), lays a block out for the C loop (groups as
lanes, padded to LANES) and calls it. Whether the library may be used at all is razer_check.py's
decision: it compares every group's errors with the torch loop's, bit for bit, once per
library and torch build.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch

from qcompiler.formats.native import build

LANES = 16  # razer_search.c LANES
GROUP_SIZES = (16, 32, 64, 128)  # checked against torch (razer_check.py); others: torch loop
MAX_SPECIALS = 16
MIN_BLOCKS_PER_THREAD = 64  # 1024 groups: below that a thread costs more than it saves
_POOL: ThreadPoolExecutor | None = None

_f32p = ctypes.POINTER(ctypes.c_float)
_i32p = ctypes.POINTER(ctypes.c_int32)
_u8p = ctypes.POINTER(ctypes.c_uint8)


def supported(wg: torch.Tensor, specials: tuple[float, ...]) -> bool:
    return (wg.device.type == "cpu" and wg.dtype == torch.float32 and wg.dim() == 3
            and wg.shape[-1] in GROUP_SIZES and 0 < len(specials) <= MAX_SPECIALS)


def load() -> ctypes.CDLL | None:
    """razer_search.c built and bound (build.py), NOT yet checked: razer_check.py checks it
    against the torch loop before any format uses it. None without a compiler or with
    QC_NATIVE=0."""
    if os.environ.get("QC_NATIVE", "1") == "0":
        return None
    so = build.load("razer_search.c")
    return None if so is None else bind(so)


def check_marker(so: ctypes.CDLL, reference_sources: list[Path]) -> Path:
    """The file whose existence says `so` passed the check against these torch-loop sources
    under this torch build (the library's own name already hashes its source, flags, compiler
    and CPU): later processes skip the check."""
    h = hashlib.sha256()
    h.update(f"{torch.__version__} {torch.version.git_version} "
             f"{torch.backends.cpu.get_cpu_capability()}".encode())
    for path in reference_sources:
        h.update(path.read_bytes())
    return Path(f"{so._name}.checked-{h.hexdigest()[:16]}")


def bind(so: ctypes.CDLL) -> ctypes.CDLL:
    """Declare razer_search.c's signatures on a loaded library."""
    so.razer_coarse.restype = ctypes.c_int
    i64, i32 = ctypes.c_int64, ctypes.c_int
    so.razer_coarse.argtypes = [_f32p, i64, i64, i64, i32, i32, i32, _f32p, i32, _f32p, _f32p,
                                _i32p, _u8p, _u8p, _u8p, _u8p, _f32p, _i32p, _i32p, _i32p]
    so.razer_refine.restype = ctypes.c_int
    so.razer_refine.argtypes = [_f32p, i64, i64, i64, i32, _f32p, _f32p, _f32p]
    return so


def _ptr(t: torch.Tensor, kind):
    return ctypes.cast(t.data_ptr(), kind)


def lanes_weights(wg: torch.Tensor) -> torch.Tensor:
    """[N, G, gs] -> [blocks, gs, LANES] (groups as lanes), padded with all-zero groups."""
    gs = wg.shape[-1]
    flat = wg.reshape(-1, gs)
    pad = -flat.shape[0] % LANES
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad, gs)])
    return flat.view(-1, LANES, gs).transpose(1, 2).contiguous()


def lanes(x: torch.Tensor, groups: int, dtype: torch.dtype, lead: int = 0) -> torch.Tensor:
    """Per-group values [*lead dims, N, G] (or [..., N, G, 1]) -> [*lead dims, groups padded
    to LANES], contiguous `dtype`; the first `lead` dims are kept."""
    keep = x.shape[:lead]
    flat = x.reshape(*keep, -1).to(dtype)
    if flat.shape[-1] != groups:
        raise ValueError(f"expected {groups} groups per row, got shape {tuple(x.shape)}")
    pad = -groups % LANES
    if pad:
        flat = torch.cat([flat, flat.new_zeros(*keep, pad)], dim=-1)
    return flat.contiguous()


class Coarse:
    """The coarse loop's result per group [M] (M = groups padded to LANES)."""

    def __init__(self, err: torch.Tensor, ratio: torch.Tensor, meta: torch.Tensor,
                 exact_at: torch.Tensor) -> None:
        self.err, self.ratio, self.meta, self.exact_at = err, ratio, meta, exact_at


def coarse(so: ctypes.CDLL, w_lanes: torch.Tensor, scales: torch.Tensor,
           specials: tuple[float, ...], floors: list[float], order: list[int],
           serve: torch.Tensor, own: torch.Tensor,
           unclipped: torch.Tensor | None, clips: list[bool]) -> Coarse:
    """razer_search.c `razer_coarse`: scales [R, layers, M] float32, serve [layers, S, M] and
    own [S, M] uint8, unclipped [M] uint8 or None."""
    blocks, gs, _ = w_lanes.shape
    m = blocks * LANES
    ratios, layers, _ = scales.shape
    err = torch.empty(m, dtype=torch.float32)
    ratio = torch.empty(m, dtype=torch.int32)
    meta = torch.empty(m, dtype=torch.int32)
    exact_at = torch.empty(m, dtype=torch.int32)
    spec = torch.tensor(specials, dtype=torch.float32)
    flo = torch.tensor(floors, dtype=torch.float32)
    ordr = torch.tensor(order, dtype=torch.int32)
    clip = torch.tensor(clips, dtype=torch.uint8)
    unc = None if unclipped is None else _ptr(unclipped, _u8p)

    def part(lo: int, hi: int) -> int:
        return so.razer_coarse(_ptr(w_lanes, _f32p), blocks, lo, hi, gs, ratios, layers,
                               _ptr(scales, _f32p), len(specials), _ptr(spec, _f32p),
                               _ptr(flo, _f32p), _ptr(ordr, _i32p), _ptr(serve, _u8p),
                               _ptr(own, _u8p), unc, _ptr(clip, _u8p), _ptr(err, _f32p),
                               _ptr(ratio, _i32p), _ptr(meta, _i32p), _ptr(exact_at, _i32p))

    if _split(blocks, part) != 0:
        raise ValueError(f"razer_coarse rejected group size {gs} or {len(specials)} specials")
    return Coarse(err, ratio, meta, exact_at)


def refine_error(so: ctypes.CDLL, w_lanes: torch.Tensor,
                 ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Function (scale [M], special value [M]) -> error [M] (razer_search.c `razer_refine`)."""
    blocks, gs, _ = w_lanes.shape

    def error(s: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
        s = s.contiguous()
        special = special.contiguous()
        out = torch.empty(blocks * LANES, dtype=torch.float32)

        def part(lo: int, hi: int) -> int:
            return so.razer_refine(_ptr(w_lanes, _f32p), blocks, lo, hi, gs, _ptr(s, _f32p),
                                   _ptr(special, _f32p), _ptr(out, _f32p))

        if _split(blocks, part) != 0:
            raise ValueError(f"razer_refine rejected group size {gs}")
        return out

    return error


def _split(blocks: int, part: Callable[[int, int], int]) -> int:
    """Run `part(lo, hi)` over [0, blocks) in torch.get_num_threads() contiguous pieces at once
    (ctypes releases the GIL during the call; each block is independent, so the result is the
    same bytes for any split); 0 when every piece returned 0."""
    pieces = max(1, min(torch.get_num_threads(), blocks // MIN_BLOCKS_PER_THREAD))
    if pieces == 1:
        return part(0, blocks)
    bounds = [blocks * i // pieces for i in range(pieces + 1)]
    futures = [_pool().submit(part, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    return max(abs(f.result()) for f in futures)


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                   thread_name_prefix="qcompiler-razer")
    return _POOL

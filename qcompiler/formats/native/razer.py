"""ctypes bindings of razer_search.c: RaZeR's weight-MSE search over groups in C.

razer_search.py decides what to search (ratios, layers of scales, bans) and keeps the torch
path; this module lays the block out for the C loop (groups as lanes, padded to LANES), calls
it, and says whether it may be used here at all: `lib()` builds the library once and checks it
against the torch path (razer_check.py: every group's errors, bit for bit). Any difference
(another CPU whose torch sums in another order, a compiler that fuses multiply-adds) and the
torch path is used, with a warning: the bytes never depend on which path ran. A passed check
leaves a marker beside the library, keyed by the torch build and the reference sources, so
later processes skip it.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Callable

import torch

from qcompiler.formats.native import build

log = logging.getLogger(__name__)

LANES = 16  # razer_search.c LANES
GROUP_SIZES = (16, 32, 64, 128)  # checked against torch by `lib`; others take the torch path
MAX_SPECIALS = 16
# the torch loop the C loop is checked against, and the check: a change to any of them re-runs it
REFERENCE_SOURCES = ("razer_search.py", "fastround.py", "grid.py", "scale_search.py",
                     "native/razer_check.py", "native/razer.py")

_lock = threading.RLock()  # the self-check calls lib() from inside lib()
_state: dict[str, ctypes.CDLL | None] = {}

_f32p = ctypes.POINTER(ctypes.c_float)
_i32p = ctypes.POINTER(ctypes.c_int32)
_u8p = ctypes.POINTER(ctypes.c_uint8)


def supported(wg: torch.Tensor, specials: tuple[float, ...]) -> bool:
    return (wg.device.type == "cpu" and wg.dtype == torch.float32 and wg.dim() == 3
            and wg.shape[-1] in GROUP_SIZES and 0 < len(specials) <= MAX_SPECIALS)


def lib() -> ctypes.CDLL | None:
    """The checked library, or None: then razer_search.py runs its torch loop."""
    with _lock:
        if "lib" not in _state:
            _state["lib"] = _load_checked()
        return _state["lib"]


def _load_checked() -> ctypes.CDLL | None:
    if os.environ.get("QC_NATIVE", "1") == "0":
        return None
    so = build.load("razer_search.c")
    if so is None:
        return None
    bind(so)
    marker = Path(f"{so._name}.checked-{_check_key()}")
    if marker.exists():
        return so
    _state["lib"] = so  # the self-check below runs the native path
    try:
        from qcompiler.formats.native.razer_check import matches_torch
        ok = matches_torch()
    except Exception as exc:  # noqa: BLE001 - any failure means: do not use it
        log.warning("native RaZeR search failed its self-check (%s): using the torch path", exc)
        ok = False
    if not ok:
        log.warning("native RaZeR search differs from torch on this machine: using the torch "
                    "path (same bytes, slower)")
        return None
    try:
        marker.touch()
    except OSError:
        pass  # read-only cache: the check runs again in the next process
    return so


def bind(so: ctypes.CDLL) -> ctypes.CDLL:
    """Declare razer_search.c's signatures on a loaded library."""
    so.razer_coarse.restype = ctypes.c_int
    so.razer_coarse.argtypes = [_f32p, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                _f32p, ctypes.c_int, _f32p, _f32p, _i32p, _u8p, _u8p, _u8p,
                                _u8p, _f32p, _i32p, _i32p, _i32p]
    so.razer_refine.restype = ctypes.c_int
    so.razer_refine.argtypes = [_f32p, ctypes.c_int64, ctypes.c_int, _f32p, _f32p, _f32p]
    return so


def _check_key() -> str:
    """What the self-check's verdict depends on besides the library (whose name already hashes
    its source, flags, compiler and CPU): the torch build and the torch loop's source files."""
    from qcompiler import formats

    h = hashlib.sha256()
    h.update(f"{torch.__version__} {torch.version.git_version} "
             f"{torch.backends.cpu.get_cpu_capability()}".encode())
    root = Path(formats.__file__).resolve().parent
    for name in REFERENCE_SOURCES:
        h.update((root / name).read_bytes())
    return h.hexdigest()[:16]


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


def coarse(w_lanes: torch.Tensor, scales: torch.Tensor, specials: tuple[float, ...],
           floors: list[float], order: list[int], serve: torch.Tensor, own: torch.Tensor,
           unclipped: torch.Tensor | None, clips: list[bool]) -> Coarse:
    """razer_search.c `razer_coarse`: scales [R, layers, M] float32, serve [layers, S, M] and
    own [S, M] uint8, unclipped [M] uint8 or None."""
    so = lib()
    assert so is not None
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
    rc = so.razer_coarse(_ptr(w_lanes, _f32p), blocks, gs, ratios, layers, _ptr(scales, _f32p),
                         len(specials), _ptr(spec, _f32p), _ptr(flo, _f32p), _ptr(ordr, _i32p),
                         _ptr(serve, _u8p), _ptr(own, _u8p), unc, _ptr(clip, _u8p),
                         _ptr(err, _f32p), _ptr(ratio, _i32p), _ptr(meta, _i32p),
                         _ptr(exact_at, _i32p))
    if rc != 0:
        raise ValueError(f"razer_coarse rejected group size {gs} or {len(specials)} specials")
    return Coarse(err, ratio, meta, exact_at)


def refine_error(w_lanes: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Function (scale [M], special value [M]) -> error [M] (razer_search.c `razer_refine`)."""
    so = lib()
    assert so is not None
    blocks, gs, _ = w_lanes.shape

    def error(s: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
        s = s.contiguous()
        special = special.contiguous()
        out = torch.empty(blocks * LANES, dtype=torch.float32)
        rc = so.razer_refine(_ptr(w_lanes, _f32p), blocks, gs, _ptr(s, _f32p),
                             _ptr(special, _f32p), _ptr(out, _f32p))
        if rc != 0:
            raise ValueError(f"razer_refine rejected group size {gs}")
        return out

    return error

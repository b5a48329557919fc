"""razer_search.py (the CPU search of RaZeR formats) returns exactly what the dense loop
razer.py `dense_search` returns, on inputs that exercise its shortcuts: special values whose
ranges share the plain FP4 scale, several ranges on one side (more than one extra rounding),
NVFP4-RaZeR's banned top blocks, exact (already quantized) values, and all-zero groups."""

from __future__ import annotations

import pytest
import torch

from qcompiler.formats.fp4 import FP4_GRID
from qcompiler.formats.fp8 import E3M3
from qcompiler.formats.grid_format import fit_scale
from qcompiler.formats.nvfp4 import RECOVER_RATIOS, global_scale, top_blocks, two_level_snap
from qcompiler.formats.razer import RAZER_SPECIALS, dense_search, special_ranges
from qcompiler.formats.razer_search import gain, gain_floor, search
from qcompiler.formats.scale_search import ErrorMeasure, to_fp16_scale

SPECIAL_SETS = [RAZER_SPECIALS, (5.0,), (-8.0, 8.0), (7.0, 10.0, -0.3), (-7.5, -12.0, 2.5, 9.0)]


def weights(seed: int, n: int = 12, groups: int = 6, gs: int = 16) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, groups, gs, generator=gen) / torch.rand(n, groups, gs, generator=gen).add(
        0.05)
    w[0, 0] = 0.0  # an all-zero group
    w[1, 1, :3] = w[1, 1, :3].abs() * 50  # a group with a far positive extreme
    return w


def both(wg, specials, search_mode, snap, extra=(), unclipped=None, elementwise=True):
    got = search(wg, specials, special_ranges(specials), 4, search_mode, snap, extra, unclipped,
                 elementwise)
    want = dense_search(wg, specials, 4, search_mode, ErrorMeasure(None, wg.shape[-1]), snap,
                        extra, unclipped)
    return got, want


@pytest.mark.parametrize("specials", SPECIAL_SETS)
@pytest.mark.parametrize("search_mode", ["rtn", "clip"])
@pytest.mark.parametrize("seed", [0, 1])
def test_same_as_dense_loop_fp16_scales(specials, search_mode, seed):
    wg = weights(seed)
    for elementwise in (True, False):
        (s, meta), (s_ref, meta_ref) = both(wg, specials, search_mode, to_fp16_scale,
                                            elementwise=elementwise)
        assert torch.equal(s, s_ref) and torch.equal(meta, meta_ref)


@pytest.mark.parametrize("specials", SPECIAL_SETS)
@pytest.mark.parametrize("gs", [16, 32])
def test_same_as_dense_loop_nvfp4_razer_rules(specials, gs):
    """E3M3 block scales, recover ratios and banned top blocks, on raw and on exact values."""
    wg = weights(2, gs=gs)
    absmax = wg.abs().amax()
    snap = two_level_snap(E3M3, global_scale(absmax, E3M3.max_value))
    unclipped = top_blocks(wg, absmax)
    (s, meta), (s_ref, meta_ref) = both(wg, specials, "clip", snap, RECOVER_RATIOS, unclipped)
    assert torch.equal(s, s_ref) and torch.equal(meta, meta_ref)
    assert bool(unclipped.any())
    exact = FP4_GRID.round_values(wg / s.clamp(min=1e-30)) * s  # already quantized values
    unclipped = top_blocks(exact, exact.abs().amax())
    (s, meta), (s_ref, meta_ref) = both(exact, specials, "clip", snap, RECOVER_RATIOS, unclipped)
    assert torch.equal(s, s_ref) and torch.equal(meta, meta_ref)


@pytest.mark.parametrize("m", [5.0, 8.0, 0.3, 2.5, 7.0, 12.0])
def test_gain_is_exactly_zero_up_to_the_floor(m):
    """Every float32 a <= gain_floor(m) gains nothing (the skipped gain passes are exact)."""
    t = gain_floor(m)
    a = torch.cat([torch.linspace(0.0, t, 200001), torch.tensor([t])])
    a = torch.cat([a, torch.nextafter(a, torch.zeros(()))]).clamp(min=0)
    dq2 = FP4_GRID.magnitude_error(a).square_()
    assert float(gain(a, dq2, m).abs().max()) == 0.0
    # and the floor is tight enough to matter: just above it some a gains
    above = torch.linspace(t, t + 1.0, 10001)[1:]
    assert float(gain(above, FP4_GRID.magnitude_error(above).square_(), m).max()) > 0.0


def test_fit_scale_share_premise():
    """For every group one of the +8 / -8 ranges has the plain FP4 scale (2 roundings a ratio)."""
    wg = weights(3)
    plain = fit_scale(wg, 6.0, -6.0)
    assert bool(((fit_scale(wg, 8.0, -6.0) == plain) | (fit_scale(wg, 6.0, -8.0) == plain)).all())

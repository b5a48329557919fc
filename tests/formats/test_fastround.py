"""The arithmetic rounding kernels (fastround.py) equal the threshold-counting rule of grid.py
bit for bit: values, codes and the sign, on every midpoint between grid values, the float32
neighbours of each midpoint and grid value, zero, values past the largest one and random inputs
over twelve decades."""

from __future__ import annotations

import pytest
import torch

from qcompiler.formats import fastround
from qcompiler.formats.dint import DINT4_VALUES
from qcompiler.formats.fp4 import FP4_GRID
from qcompiler.formats.grid import Grid
from qcompiler.formats.pot import pot_values

GRIDS = {"fp4": FP4_GRID, "dint4": Grid(DINT4_VALUES, sign_bit=3),
         **{f"pot{b}": Grid(pot_values(b), sign_bit=b - 1) for b in (2, 3, 4)}}


def probes(grid: Grid) -> torch.Tensor:
    """Midpoints, grid values, their float neighbours, extremes and random magnitudes, +-."""
    mags = sorted({abs(v) for v in grid.values})
    points = torch.tensor(mags + [(a + b) / 2 for a, b in zip(mags, mags[1:])] +
                          [0.0, 1e-30, 1e-8, 7.0, 100.0, 1e6], dtype=torch.float32)
    inf = torch.full_like(points, float("inf"))
    near = torch.cat([points, torch.nextafter(points, inf), torch.nextafter(points, -inf).abs()])
    gen = torch.Generator().manual_seed(0)
    rand = torch.exp(torch.empty(20000).uniform_(-14.0, 14.0, generator=gen)) * torch.rand(
        20000, generator=gen)
    grid_scale = torch.rand(2000, generator=gen) * 8.0  # dense over the grid's own range
    a = torch.cat([near, rand, grid_scale])
    return torch.cat([a, -a])


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_kernel_matches_threshold_rule(name):
    grid = GRIDS[name]
    assert grid._kernel is not None, "grid lost its arithmetic kernel"
    y = probes(grid)
    v, c = grid.round(y)
    rv, rc = grid.round_reference(y)
    assert torch.equal(v, rv) and torch.equal(torch.signbit(v), torch.signbit(rv))
    assert torch.equal(c, rc)
    assert torch.equal(grid.round_values(y), rv)
    assert torch.equal(grid.codes(y), rc)
    a = y.abs()
    assert torch.equal(grid.magnitude_error(a), grid.round_reference(a)[0] - a)


def test_no_kernel_for_an_unstructured_grid():
    assert fastround.kernel_for((0.0, 0.3, 1.0, 2.0)) is None


def test_binned_kernel_matches_threshold_rule_on_nf4():
    from qcompiler.formats.nf4 import NF4_VALUES

    grid = Grid(NF4_VALUES)
    vals = torch.tensor(NF4_VALUES)
    mids = (vals[1:] + vals[:-1]) / 2
    pts = torch.cat([vals, mids, torch.tensor([0.0, -0.0, 1e-30, 5.0, -5.0, 1e6, -1e6])])
    inf = torch.full_like(pts, float("inf"))
    gen = torch.Generator().manual_seed(1)
    y = torch.cat([pts, torch.nextafter(pts, inf), torch.nextafter(pts, -inf),
                   torch.randn(50000, generator=gen) * torch.rand(50000, generator=gen) * 3])
    v, c = grid.round(y)
    rv, rc = grid.round_reference(y)
    assert torch.equal(v, rv) and torch.equal(c, rc)
    assert torch.equal(grid.codes(y), rc)


def test_codes_used_is_the_set_of_codes_of_each_group():
    from qcompiler.formats.fp4 import codes_used

    gen = torch.Generator().manual_seed(2)
    for gs in (8, 16, 32, 128, 256, 12):
        codes = torch.randint(0, 16, (5, 7, gs), generator=gen, dtype=torch.uint8)
        codes[0, 0] = 3  # a group with a single code
        want = sum(((codes == c).any(-1).to(torch.int32) << c) for c in range(16))
        assert torch.equal(codes_used(codes), want)

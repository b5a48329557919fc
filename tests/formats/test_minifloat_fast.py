"""MiniFloat.quantize (exponent-bit step, fp8.py) equals the frexp/ldexp definition used by
`encode`, bit for bit, for E4M3, E3M3 and E2M1 on every code's value, the midpoints between
neighbours and their float32 neighbours, and random values over many decades."""

from __future__ import annotations

import pytest
import torch

from qcompiler.formats.fp8 import E2M1, E3M3, E4M3, MiniFloat


def reference(fmt: MiniFloat, x: torch.Tensor) -> torch.Tensor:
    q, e = fmt._round_parts(x)
    val = torch.ldexp(q, (e - fmt.man_bits).to(torch.float32))
    return torch.where(x < 0, -val, val) if fmt.signed else val


@pytest.mark.parametrize("fmt", [E4M3, E3M3, E2M1], ids=lambda f: f.name)
def test_quantize_matches_reference(fmt):
    vals = fmt.table()
    vals = vals[torch.isfinite(vals)].abs().unique().sort().values
    mids = (vals[1:] + vals[:-1]) / 2
    pts = torch.cat([vals, mids, torch.tensor([0.0, 1e-30, 1e-12, fmt.max_value * 3, 1e30])])
    inf = torch.full_like(pts, float("inf"))
    pts = torch.cat([pts, torch.nextafter(pts, inf), torch.nextafter(pts, -inf).abs()])
    gen = torch.Generator().manual_seed(0)
    rand = torch.exp(torch.empty(50000).uniform_(-30.0, 10.0, generator=gen))
    x = torch.cat([pts, rand, -pts, -rand])
    got, want = fmt.quantize(x), reference(fmt, x)
    assert torch.equal(got, want) and torch.equal(torch.signbit(got), torch.signbit(want))

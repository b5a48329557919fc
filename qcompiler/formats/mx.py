"""MXFP4 (OCP Microscaling v1.0): blocks of 32 FP4 E2M1 elements sharing an E8M0 scale.

Scale = 2^e with e = floor(log2(absmax)) - 2 (2 = E2M1's largest exponent), stored as the E8M0
code e + 127 (clamped to 0..254; 255 is NaN). Elements beyond 6 * 2^e saturate to +-6, as the
spec says. That rule already clips (absmax / 2^e lies in [4, 8)), so "rtn" is the spec's rule and
"clip" tries the neighbouring exponents e - 1 and e + 1 too: with a power-of-two scale those are
the only other sensible scales. An all-zero block gets code 0 and decodes to zeros.

Idempotent without extra rules: a dequantized block's max is 4 or 6 times 2^e (e + 1 never wins
with a smaller max: its grid, doubled, is a subset of e's below 8), so its own rule finds e again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qcompiler.formats.base import Encoded, Format, QTensor
from qcompiler.formats.fp4 import FP4_GRID, FP4_VALUES
from qcompiler.formats.fp8 import E8M0_BIAS, e8m0_decode, floor_log2
from qcompiler.formats.grid_format import scale_error
from qcompiler.formats.scale_search import ErrorMeasure, RunningBest

E2M1_EMAX = 2


@dataclass(frozen=True)
class MXFP4Format(Format):
    def codebook(self, **opts: Any) -> torch.Tensor:
        return torch.tensor(FP4_VALUES, dtype=torch.float32)

    def _encode(self, wg: torch.Tensor, search: str, measure: ErrorMeasure,
                opts: dict[str, Any], absmax: torch.Tensor | None = None) -> Encoded:
        amax = wg.abs().amax(-1, keepdim=True)
        e0 = (floor_log2(amax) - E2M1_EMAX).clamp(-E8M0_BIAS, E8M0_BIAS)
        shifts = (0,) if search == "rtn" else (0, 1, -1)
        error = scale_error(FP4_GRID, wg, measure)
        best = RunningBest()
        for d in shifts:
            e = (e0 + d).clamp(-E8M0_BIAS, E8M0_BIAS)
            best.offer(error(torch.ldexp(torch.ones_like(amax), e.to(torch.float32))), exp=e)
        e = best["exp"]
        s = torch.ldexp(torch.ones_like(amax), e.to(torch.float32))
        codes = FP4_GRID.codes(wg / s)
        return Encoded(codes=codes, scales=(e[..., 0] + E8M0_BIAS).to(torch.uint8))

    def _decode(self, codes: torch.Tensor, q: QTensor) -> torch.Tensor:
        table = torch.tensor(FP4_VALUES, dtype=torch.float32, device=codes.device)
        return table[codes.long()] * e8m0_decode(q.scales).unsqueeze(-1)


MXFP4 = MXFP4Format(
    name="mxfp4", bits=4, default_group_size=32, group_sizes=(32,),
    scale_type="e8m0", has_zero_point=False, role="weight",
    description="OCP MXFP4: blocks of 32 FP4 E2M1 values, E8M0 (power-of-two) block scale")

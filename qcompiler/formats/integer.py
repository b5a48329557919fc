"""Uniform integer formats: asymmetric int4/int3/int2 (scale + zero point) and symmetric int4.

Asymmetric (FORMATS.md): q = clamp(round(w/s) + z, 0, 2^b - 1), s = (max - min) / (2^b - 1),
z = round(-min/s), dequantized = (q - z) * s. We widen [min, max] to include 0 (as GPTQ does), so
z always lies in [0, 2^b - 1] (it is stored as uint8) and 0 is exactly representable: an
all-zero group has s = 0, z = 0 and decodes to exact zeros. Clip search shrinks both ends by r.
Rounding is round-half-to-even on w/s (torch.round) before the zero point is added. The fp16
scale is rounded DOWN, not to nearest, so the group's extremes always land on codes 0 and
2^b - 1 and quantizing a dequantized group gives the same scale, zero and codes back.

Symmetric int4: q in [-8, 7]; the stored code is q + 8 (offset binary, so codes are unsigned like
every other format): dequantized = (code - 8) * s. FORMATS.md's textbook scale is absmax / 7; we
fit the group onto the whole grid instead, s = max(max / 7, -min / 8), so a group whose extreme
is negative uses -8 rather than wasting it. It is never larger than absmax / 7 and clips nothing;
it also makes quantization idempotent: with absmax / 7 a clipped group that used -8
re-quantizes to the larger scale 8s/7.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qcompiler.formats.base import Encoded, Format, QTensor
from qcompiler.formats.grid import Grid
from qcompiler.formats.grid_format import GridFormat
from qcompiler.formats.scale_search import ErrorMeasure, safe, search_ratio, to_fp16_scale_down

INT_GROUP_SIZES = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class IntAsymFormat(Format):
    """b-bit unsigned codes with an fp16 scale and a uint8 zero point per group."""

    def codebook(self, **opts: Any) -> torch.Tensor:
        """The code values q (before the zero point): 0 .. 2^b - 1."""
        return torch.arange(1 << self.bits, dtype=torch.float32)

    def group_overhead_bits(self) -> int:
        return 16 + 8  # fp16 scale + uint8 zero point

    def _encode(self, wg: torch.Tensor, search: str, measure: ErrorMeasure,
                opts: dict[str, Any], absmax: torch.Tensor | None = None) -> Encoded:
        qmax = float((1 << self.bits) - 1)
        lo = wg.amin(-1, keepdim=True).clamp(max=0)
        hi = wg.amax(-1, keepdim=True).clamp(min=0)

        def scale_zero(ratio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            s = to_fp16_scale_down((hi - lo) * ratio / qmax)
            return s, torch.round(-lo * ratio / safe(s)).clamp_(0, qmax)

        def evaluate(ratio: torch.Tensor) -> torch.Tensor:
            s, z = scale_zero(ratio)
            y = wg / safe(s)
            q = (torch.round(y) + z).clamp_(0, qmax)
            return measure(q - z - y, s)

        s, z = scale_zero(search_ratio(evaluate, wg, self.bits, search))
        codes = (torch.round(wg / safe(s)) + z).clamp_(0, qmax).to(torch.uint8)
        return Encoded(codes=codes, scales=s[..., 0].to(torch.float16),
                       zeros=z[..., 0].to(torch.uint8))

    def _decode(self, codes: torch.Tensor, q: QTensor) -> torch.Tensor:
        assert q.zeros is not None
        zeros = q.zeros.to(torch.float32).unsqueeze(-1)
        return (codes.to(torch.float32) - zeros) * q.scales.to(torch.float32).unsqueeze(-1)


def _int_asym(bits: int) -> IntAsymFormat:
    return IntAsymFormat(
        name=f"int{bits}", bits=bits, default_group_size=128, group_sizes=INT_GROUP_SIZES,
        scale_type="fp16", has_zero_point=True, role="weight",
        description=f"asymmetric INT{bits}: fp16 scale and uint8 zero point per group")


INT4 = _int_asym(4)
INT3 = _int_asym(3)
INT2 = _int_asym(2)

INT4_SYM = GridFormat(
    name="int4-sym", bits=4, default_group_size=128, group_sizes=INT_GROUP_SIZES,
    scale_type="fp16", has_zero_point=False, role="weight",
    description="symmetric INT4 (q in [-8, 7], code = q + 8), fp16 scale per group",
    grid_def=Grid(tuple(float(c - 8) for c in range(16)), integer=True))

"""NVFP4: blocks of 16 FP4 E2M1 elements, an FP8 E4M3 block scale and an FP32 per-tensor scale.

value = fp4[code] * e4m3(scale_code) * global_scale, global_scale = absmax(tensor) / (6 * 448)
so the largest block scale lands on E4M3's maximum (NVIDIA's recipe; the RaZeR authors'
`quant_nvfp4` does the same). Block scale = block absmax / 6 in units of the global scale,
rounded to E4M3 (nearest-even; non-zero blocks clamped to [2^-9, 448] like the authors' script,
all-zero blocks get scale 0). Clip search multiplies the block scale by the ratios before the
E4M3 rounding. `two_level_snap` is shared with NVFP4-RaZeR (E3M3 block scales).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from qcompiler.formats.base import Encoded, Format, QTensor
from qcompiler.formats.fp4 import FP4_GRID, FP4_VALUES
from qcompiler.formats.fp8 import E4M3, MiniFloat
from qcompiler.formats.grid_format import fit_scale, scale_error
from qcompiler.formats.scale_search import ErrorMeasure, safe, search_ratio

FP4_MAX = 6.0


def global_scale(wg: torch.Tensor, block_max: float) -> torch.Tensor:
    """Per-tensor fp32 scale absmax / (6 * block_max); 1 for an all-zero tensor."""
    g = wg.abs().amax() / (FP4_MAX * block_max)
    return torch.where(g > 0, g, torch.ones_like(g)).reshape(1).to(torch.float32)


def two_level_snap(codec: MiniFloat, g: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Maps full scales s to storable ones: codec(s / g) * g, non-zero block scales kept >= the
    codec's smallest value so small blocks are not flushed to zero."""
    lo = codec.min_subnormal

    def snap(s: torch.Tensor) -> torch.Tensor:
        sb = s / g
        sb = torch.where(sb > 0, sb.clamp(min=lo), sb)
        return codec.quantize(sb) * g

    return snap


@dataclass(frozen=True)
class NVFP4Format(Format):
    def codebook(self, **opts: Any) -> torch.Tensor:
        return torch.tensor(FP4_VALUES, dtype=torch.float32)

    def _encode(self, wg: torch.Tensor, search: str, measure: ErrorMeasure,
                opts: dict[str, Any]) -> Encoded:
        g = global_scale(wg, E4M3.max_value)
        snap = two_level_snap(E4M3, g)
        base = fit_scale(wg, FP4_MAX, -FP4_MAX)
        error = scale_error(FP4_GRID, wg, measure)
        s = snap(base * search_ratio(lambda r: error(snap(base * r)), wg, self.bits, search))
        _, codes = FP4_GRID.round(wg / safe(s))
        return Encoded(codes=codes, scales=E4M3.encode(s[..., 0] / g), global_scale=g)

    def _decode(self, codes: torch.Tensor, q: QTensor) -> torch.Tensor:
        assert q.global_scale is not None
        table = torch.tensor(FP4_VALUES, dtype=torch.float32, device=codes.device)
        block = E4M3.decode(q.scales) * q.global_scale.to(torch.float32)
        return table[codes.long()] * block.unsqueeze(-1)


NVFP4 = NVFP4Format(
    name="nvfp4", bits=4, default_group_size=16, group_sizes=(16,),
    scale_type="e4m3", has_zero_point=False, role="weight",
    description="NVFP4: blocks of 16 FP4 E2M1 values, E4M3 block scale, fp32 tensor scale")

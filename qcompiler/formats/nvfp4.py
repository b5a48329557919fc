"""NVFP4: blocks of 16 FP4 E2M1 elements, an FP8 E4M3 block scale and an FP32 per-tensor scale.

value = fp4[code] * e4m3(scale_code) * global_scale, global_scale = absmax(tensor) / (6 * 448)
so the largest block scale lands on E4M3's maximum (NVIDIA's recipe; the RaZeR authors'
`quant_nvfp4` does the same). Block scale = block absmax / 6 in units of the global scale,
rounded to E4M3 (nearest-even; non-zero blocks clamped to [2^-9, 448] like the authors' script,
all-zero blocks get scale 0). Clip search multiplies the block scale by the ratios before the
E4M3 rounding. `two_level_snap` is shared with NVFP4-RaZeR (E3M3 block scales).

Three rules make quantization idempotent (re-quantizing a dequantized tensor returns the same
codes and scales, which GPTQ followed by lower-datatype relies on):
- the global scale is rounded to 16 significant bits, so every dequantized value
  fp4 * e4m3 * global is exact in fp32 and the tensor's absmax 6 * 448 * global gives back the
  same global scale;
- the block(s) holding the tensor's absmax are never clipped (ratio >= 1): clipping them would
  lower the absmax and so the global scale of the re-quantization (one block per tensor);
- `RECOVER_RATIOS` (6/5 and 6/4 of the absmax scale) are tried too, even under "rtn": where the
  block-scale codec is coarse (subnormal E4M3/E3M3 scales) rounding the scale to nearest can
  round it up enough that the block's largest element lands on 4 (or RaZeR's 5) instead of 6;
  re-quantizing needs those ratios to find that scale again. They never clip, and a candidate
  only wins when its error is strictly lower, so elsewhere they change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from qcompiler.formats.base import Encoded, Format, QTensor
from qcompiler.formats.fp4 import FP4_GRID, FP4_VALUES, ambiguous_groups
from qcompiler.formats.fp8 import E4M3, MiniFloat
from qcompiler.formats.grid_format import fit_scale, scale_error
from qcompiler.formats.scale_search import ErrorMeasure, round_significand, safe, search_ratio

FP4_MAX = 6.0
RECOVER_RATIOS = (FP4_MAX / 5.0, FP4_MAX / 4.0)
GLOBAL_SCALE_BITS = 16


def tensor_absmax(wg: torch.Tensor, absmax: torch.Tensor | None) -> torch.Tensor:
    """The whole tensor's max |w|: given by the caller when wg is a block of rows (chunked.py)."""
    return wg.abs().amax() if absmax is None else absmax


def global_scale(absmax: torch.Tensor, block_max: float) -> torch.Tensor:
    """Per-tensor fp32 scale absmax / (6 * block_max) to 16 significant bits; 1 for an all-zero
    tensor."""
    g = round_significand(absmax / (FP4_MAX * block_max), GLOBAL_SCALE_BITS)
    return torch.where(g > 0, g, torch.ones_like(g)).reshape(1).to(torch.float32)


def top_blocks(wg: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """[N, G] bool: the blocks holding the tensor's absmax (they set the global scale)."""
    amax = wg.abs().amax(-1)
    return (amax == absmax) & (amax > 0)


def two_level_snap(codec: MiniFloat, g: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Maps full scales s to storable ones: codec(s / g) * g, non-zero block scales kept >= the
    codec's smallest value so small blocks are not flushed to zero."""
    lo = codec.min_subnormal

    def snap(s: torch.Tensor) -> torch.Tensor:
        sb = s / g
        sb = sb.clamp(min=lo).mul_(sb > 0)  # = where(sb > 0, max(sb, lo), 0): s >= 0
        return codec.quantize_magnitude(sb) * g

    return snap


@dataclass(frozen=True)
class NVFP4Format(Format):
    canonical_pass: ClassVar[bool] = True  # several exact encodings per group: base.py

    def needs_absmax(self, opts: dict[str, Any]) -> bool:
        return True  # the global scale

    def _ambiguous_groups(self, enc: Encoded, opts: dict[str, Any]) -> torch.Tensor | None:
        return ambiguous_groups(enc.codes)

    def codebook(self, **opts: Any) -> torch.Tensor:
        return torch.tensor(FP4_VALUES, dtype=torch.float32)

    def _encode(self, wg: torch.Tensor, search: str, measure: ErrorMeasure,
                opts: dict[str, Any], absmax: torch.Tensor | None = None) -> Encoded:
        absmax = tensor_absmax(wg, absmax)
        g = global_scale(absmax, E4M3.max_value)
        snap = two_level_snap(E4M3, g)
        base = fit_scale(wg, FP4_MAX, -FP4_MAX)
        error = scale_error(FP4_GRID, wg, measure)
        top = top_blocks(wg, absmax)

        def evaluate(r: torch.Tensor) -> torch.Tensor:
            return error(snap(base * r)).masked_fill_(top & (r[..., 0] < 1), float("inf"))

        s = snap(base * search_ratio(evaluate, wg, self.bits, search, RECOVER_RATIOS))
        codes = FP4_GRID.codes(wg / safe(s))
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

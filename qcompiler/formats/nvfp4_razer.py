"""NVFP4-RaZeR (arXiv 2501.04052 v2): NVFP4 with RaZeR special values at NVFP4's footprint.

The block scale drops to 6-bit unsigned E3M3 (fp8.py: range [2^-5, 28]) and its 2 spare bits
index the block's special value in (+5, -5, +8, -8), so scale + metadata is one byte per 16
elements, like NVFP4's E4M3 scale. The per-tensor fp32 scale is absmax / (6 * 28) so the largest
block scale lands on E3M3's maximum. This is the authors' `quant_nvfp4_razer_e3m3`
(yc2367/NVFP4-RaZeR): four candidates searched per block. (Their E4M3 variant, where the scale's
sign bit selects +-5 only, is not implemented.)

Layout: `scales` holds the E3M3 codes (uint8, 6 bits used) and `meta` the special index (uint8),
as for razer4; a kernel or file may store them as one byte, `meta << 6 | scale`, which is what
bits_per_weight counts. Codes, special-value rule and ties: razer.py. Global scale, unclipped
top blocks and the recover ratios that keep quantization idempotent: nvfp4.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from qcompiler.formats.base import Encoded, Format, QTensor
from qcompiler.formats.fp4 import FP4_VALUES, NEG_ZERO_CODE, ambiguous_groups
from qcompiler.formats.fp8 import E3M3
from qcompiler.formats.nvfp4 import (RECOVER_RATIOS, global_scale, tensor_absmax, top_blocks,
                                    two_level_snap)
from qcompiler.formats.razer import (RAZER_SPECIALS, canonical_meta, razer_codes,
                                     search_special)
from qcompiler.formats.scale_search import ErrorMeasure, safe


@dataclass(frozen=True)
class NVFP4RazerFormat(Format):
    canonical_pass: ClassVar[bool] = True  # several exact encodings per group: base.py

    specials: tuple[float, ...] = RAZER_SPECIALS

    def needs_absmax(self, opts: dict[str, Any]) -> bool:
        return True  # the global scale

    def _ambiguous_groups(self, enc: Encoded, opts: dict[str, Any]) -> torch.Tensor | None:
        return ambiguous_groups(enc.codes, enc.meta, self.specials)

    def group_overhead_bits(self) -> int:
        return 8  # 6-bit E3M3 scale + 2-bit special index

    def codebook(self, meta: int | None = None, **opts: Any) -> torch.Tensor:
        """[4, 16]: row i is the code table of a block whose meta is i (or row `meta`)."""
        rows = torch.tensor(FP4_VALUES, dtype=torch.float32).repeat(len(self.specials), 1)
        rows[:, NEG_ZERO_CODE] = torch.tensor(self.specials, dtype=torch.float32)
        return rows if meta is None else rows[meta]

    def _encode(self, wg: torch.Tensor, search: str, measure: ErrorMeasure,
                opts: dict[str, Any], absmax: torch.Tensor | None = None) -> Encoded:
        absmax = tensor_absmax(wg, absmax)
        g = global_scale(absmax, E3M3.max_value)
        snap = two_level_snap(E3M3, g)
        s, meta = search_special(wg, self.specials, self.bits, search, measure, snap,
                                 extra=RECOVER_RATIOS, unclipped=top_blocks(wg, absmax),
                                 elementwise_snap=True)
        special = torch.tensor(self.specials, dtype=torch.float32, device=wg.device)[meta]
        codes = razer_codes(wg / safe(s), special.unsqueeze(-1))
        meta = canonical_meta(codes, meta)
        return Encoded(codes=codes, scales=E3M3.encode(s[..., 0] / g), meta=meta.to(torch.uint8),
                       global_scale=g)

    def _decode(self, codes: torch.Tensor, q: QTensor) -> torch.Tensor:
        assert q.meta is not None and q.global_scale is not None
        table = torch.tensor(FP4_VALUES, dtype=torch.float32, device=codes.device)
        specials = torch.tensor(self.specials, dtype=torch.float32, device=codes.device)
        vals = torch.where(codes == NEG_ZERO_CODE, specials[q.meta.long()].unsqueeze(-1),
                           table[codes.long()])
        block = E3M3.decode(q.scales) * q.global_scale.to(torch.float32)
        return vals * block.unsqueeze(-1)


NVFP4_RAZER = NVFP4RazerFormat(
    name="nvfp4-razer", bits=4, default_group_size=16, group_sizes=(16,),
    scale_type="e3m3", has_zero_point=False, role="weight",
    description="NVFP4-RaZeR: blocks of 16 FP4 values with a special value (+-5, +-8), "
                "E3M3 block scale + 2-bit index in one byte, fp32 tensor scale")

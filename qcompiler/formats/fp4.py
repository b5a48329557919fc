"""FP4 E2M1: the element format of FP4, MXFP4, NVFP4 and RaZeR.

Sign bit 3, then 2 exponent bits (bias 1) and 1 mantissa bit. Magnitudes of codes 0..7:
0, 0.5, 1, 1.5, 2, 3, 4, 6 (code 1 is the subnormal 0.5); code 8 is -0, redundant (RaZeR reuses
it). Rounding: nearest, ties to the even code (grid.py), e.g. 2.5 -> 2 (code 4), 5 -> 4 (code 6),
0.25 -> 0; the RaZeR scripts send ties to the lower value instead, FORMATS.md allows either.

`decode_e2m1_fp16` is the kernel's decode written in torch: put the 3 magnitude bits at fp16 bits
11..9, the sign at bit 15, reinterpret as fp16 and multiply by 2^14. Normals and the subnormal
come out exact; tests check it against the table.
"""

from __future__ import annotations

import torch

from qcompiler.formats.grid import Grid
from qcompiler.formats.grid_format import SCALE_MODES, GridFormat

FP4_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
FP4_VALUES = FP4_MAGNITUDES + tuple(-m for m in FP4_MAGNITUDES)
FP4_GRID = Grid(FP4_VALUES, sign_bit=3)
NEG_ZERO_CODE = 8


def decode_e2m1_fp16(codes: torch.Tensor) -> torch.Tensor:
    """FP4 codes -> fp16 values by the bit trick (no table lookup)."""
    c = codes.to(torch.int32)
    bits = ((c & 7) << 9) | ((c & 8) << 12)
    bits = torch.where(bits >= 1 << 15, bits - (1 << 16), bits)  # as signed int16
    return bits.to(torch.int16).view(torch.float16) * (2.0 ** 14)


FP4 = GridFormat(
    name="fp4", bits=4, default_group_size=128, group_sizes=(16, 32, 64, 128, 256),
    scale_type="fp16", has_zero_point=False, role="weight",
    description="FP4 E2M1 with an fp16 scale per group",
    options=(("scale", SCALE_MODES),), grid_def=FP4_GRID)

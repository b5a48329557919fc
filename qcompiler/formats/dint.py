"""dINT4 (Lee et al., EMNLP 2023, arXiv 2311.05161): integers plus a denormal value near zero.

The paper's point: under W4A8 plain INT4 rounds small weights to zero (underflow); dINT keeps a
"balanced quantization range with a separate special value for small values" (its Figure 5
caption, the part of the paper we could read; the full code table was not available to us).
Our table, recorded as a choice: sign-magnitude like FP4 (bit 3 = sign), magnitudes
0, 0.5, 1, 2, 3, 4, 5, 6 for codes 0..7: the integer 7 gives way to the denormal 0.5, the range is
symmetric (+-6), and code 8 (-0) is never produced. Dequantized = value * fp16 scale,
RTN scale = absmax / 6. An integer MAC handles it with one extra fraction bit.
"""

from __future__ import annotations

from qcompiler.formats.grid import Grid
from qcompiler.formats.grid_format import GridFormat

DINT4_MAGNITUDES = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
DINT4_VALUES = DINT4_MAGNITUDES + tuple(-m for m in DINT4_MAGNITUDES)

DINT4 = GridFormat(
    name="dint4", bits=4, default_group_size=128, group_sizes=(16, 32, 64, 128, 256),
    scale_type="fp16", has_zero_point=False, role="weight",
    description="dINT4: sign-magnitude integers 0..6 with a denormal 0.5, fp16 scale per group",
    grid_def=Grid(DINT4_VALUES, sign_bit=3))

"""NF4 (QLoRA, arXiv 2305.14314): 16 normal-quantile values in [-1, 1], absmax scale per group.

The table is bitsandbytes' float32 constants (also in the RaZeR authors' `quant_nf4`); code i is
the i-th smallest value, so code 7 is exactly 0 and code 15 is 1. QLoRA's default block is 64.
"""

from __future__ import annotations

from qcompiler.formats.grid import Grid
from qcompiler.formats.grid_format import GridFormat

NF4_VALUES = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)

NF4 = GridFormat(
    name="nf4", bits=4, default_group_size=64, group_sizes=(16, 32, 64, 128, 256),
    scale_type="fp16", has_zero_point=False, role="weight",
    description="NormalFloat4 (QLoRA) with an fp16 absmax scale per group",
    grid_def=Grid(NF4_VALUES))

"""FP8 E4M3 as a quantization format: values are E4M3 numbers times an fp32 scale (absmax/448).

Codes are the E4M3 bit patterns (fp8.py, bit-exact with torch.float8_e4m3fn); rounding is
nearest-even and saturates at 448 instead of producing NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcompiler.formats.activation import ActivationFormat
from qcompiler.formats.fp8 import E4M3


@dataclass(frozen=True)
class FP8Format(ActivationFormat):
    def round_scaled(self, y: torch.Tensor) -> torch.Tensor:
        return E4M3.quantize(y)

    def encode_scaled(self, y: torch.Tensor) -> torch.Tensor:
        return E4M3.encode(y)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return E4M3.decode(codes)


FP8_E4M3 = FP8Format(
    name="fp8-e4m3", bits=8, default_group_size=None, group_sizes=(16, 32, 64, 128, 256),
    scale_type="fp32", has_zero_point=False, role="both", default_search="rtn",
    description="FP8 E4M3 (max 448), fp32 scale per token (row), tensor or group",
    options=(("granularity", ("token", "tensor", "group")),), qmax=448.0)

"""INT8: symmetric, codes in [-127, 127] stored as two's complement reinterpreted as uint8.

-128 is never produced, so the grid is symmetric and quantize(-x) == -quantize(x). Rounding is
round-half-to-even (torch.round).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcompiler.formats.activation import ActivationFormat


@dataclass(frozen=True)
class Int8Format(ActivationFormat):
    def round_scaled(self, y: torch.Tensor) -> torch.Tensor:
        return torch.round(y).clamp_(-self.qmax, self.qmax)

    def encode_scaled(self, y: torch.Tensor) -> torch.Tensor:
        return self.round_scaled(y).to(torch.int8).view(torch.uint8)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.to(torch.uint8).view(torch.int8).to(torch.float32)


INT8 = Int8Format(
    name="int8", bits=8, default_group_size=None, group_sizes=(16, 32, 64, 128, 256),
    scale_type="fp32", has_zero_point=False, role="both", default_search="rtn",
    description="symmetric INT8, fp32 scale per token (row), tensor or group",
    options=(("granularity", ("token", "tensor", "group")),), qmax=127.0)

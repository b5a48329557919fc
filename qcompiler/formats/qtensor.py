"""`QTensor` (a quantized tensor's parts) and `Encoded` (what a format's `_encode` returns).

Plain data, below every format: base.py, chunked.py and canonical.py all build them, so they
live here rather than in base.py (which imports those two helpers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

TENSOR_KEYS = ("codes", "scales", "zeros", "meta", "global_scale")


@dataclass(frozen=True, eq=False)
class QTensor:
    """A quantized [N, K] tensor: packed codes plus per-group scales and metadata.

    codes: uint8, packed along K (packing.py). scales: [N, K/G]. zeros: [N, K/G] uint8 (integer
    asymmetric formats). meta: [N, K/G] uint8 (RaZeR: index of the group's special value).
    global_scale: float32 per-tensor scale (NVFP4 family). opts: the format options that
    dequantization needs (JSON-friendly values only).
    """

    format: str
    shape: tuple[int, int]
    group_size: int
    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None = None
    meta: torch.Tensor | None = None
    global_scale: torch.Tensor | None = None
    opts: dict[str, Any] = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The non-None tensors under their contract names."""
        out = {k: getattr(self, k) for k in TENSOR_KEYS}
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_tensors(cls, format: str, shape: tuple[int, int], group_size: int,
                     tensors: dict[str, torch.Tensor], opts: dict[str, Any] | None = None) -> QTensor:
        unknown = set(tensors) - set(TENSOR_KEYS)
        if unknown:
            raise ValueError(f"unknown QTensor parts {sorted(unknown)}; expected {TENSOR_KEYS}")
        return cls(format=format, shape=(int(shape[0]), int(shape[1])), group_size=int(group_size),
                   codes=tensors["codes"], scales=tensors["scales"], zeros=tensors.get("zeros"),
                   meta=tensors.get("meta"), global_scale=tensors.get("global_scale"),
                   opts=dict(opts or {}))

    def to(self, device: torch.device | str) -> QTensor:
        moved = {k: v.to(device) for k, v in self.tensors().items()}
        return QTensor.from_tensors(self.format, self.shape, self.group_size, moved, self.opts)

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def nbytes(self) -> int:
        """Bytes of storage, all parts together."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


@dataclass(frozen=True)
class Encoded:
    """What a format's `_encode` returns: unpacked codes [N, G, gs] and the side tensors."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None = None
    meta: torch.Tensor | None = None
    global_scale: torch.Tensor | None = None
    opts: dict[str, Any] = field(default_factory=dict)

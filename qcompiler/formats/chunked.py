"""Quantizing a weight a block of rows at a time, so a search's intermediates stay in the cache.

Why: a scale search is a chain of a few hundred elementwise tensor ops over the whole weight. On
a 4096 x 4096 weight each op streams 64 MB through memory and the CPU waits on it; on a block of
about 2^18 weights (1 MB) the same ops run 10-20x faster from the cache. Every op of a search is
per group or per row, so a block of rows gives bit-identical results; what needs the whole
tensor (a per-tensor scale: NVFP4's global scale, a "tensor" granularity scale) gets its max |w|
as `absmax` (`Format.needs_absmax`). Each block's codes are packed while they are in the cache.

The canonical pass (base.py `_canonicalize`) runs per block too. With a per-tensor scale it
needs the max |value| of the whole DEQUANTIZED tensor, so those formats encode every block
first, then canonicalise each block against that maximum.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from qcompiler.formats import packing
from qcompiler.formats.qtensor import QTensor

if TYPE_CHECKING:
    from qcompiler.formats.base import Encoded, Format
    from qcompiler.formats.scale_search import ErrorMeasure

CHUNK_ELEMENTS = 1 << 18


def default_rows(n: int, k: int) -> int:
    """Rows per block: about CHUNK_ELEMENTS weights, at least one row."""
    return max(1, min(n, CHUNK_ELEMENTS // max(k, 1)))


def encode(fmt: Format, wg: torch.Tensor, search: str, measure: ErrorMeasure,
           opts: dict[str, Any], absmax: torch.Tensor | None) -> Encoded:
    """`fmt._encode` (and its canonical pass) block by block; codes come back PACKED [N, bytes]."""
    n, groups, gs = wg.shape
    rows = fmt.chunk_rows(n, groups * gs, measure, search) if n else 1
    canonical = fmt.needs_canonical_pass(opts)
    deferred = canonical and absmax is not None  # needs the dequantized tensor's max first
    parts: list[Encoded] = []
    for lo in range(0, max(n, 1), rows):
        part = fmt._encode(wg[lo:lo + rows], search, measure, opts, absmax)
        if canonical and not deferred:
            part = fmt._canonicalize(part, search, opts)
        parts.append(part if deferred else _packed(fmt, part))
    if deferred:
        dq_max = torch.stack([_dequantized_absmax(fmt, p) for p in parts]).amax()
        parts = [_packed(fmt, fmt._canonicalize(p, search, opts, dq_max)) for p in parts]
    enc = _concat(parts)
    if enc.scales.is_floating_point():
        # an all-zero group's scale is +-0 depending on where a vectorized max met it: store +0
        enc = dataclasses.replace(enc, scales=enc.scales + 0.0)
    return enc


def _packed(fmt: Format, part: Encoded) -> Encoded:
    rows, groups, gs = part.codes.shape
    return dataclasses.replace(part, codes=packing.pack(part.codes.reshape(rows, groups * gs),
                                                        fmt.bits))


def _dequantized_absmax(fmt: Format, part: Encoded) -> torch.Tensor:
    values = fmt._decode(part.codes, _qtensor(fmt, part))
    lo, hi = torch.aminmax(values)
    return torch.maximum(hi, -lo)


def _qtensor(fmt: Format, part: Encoded):
    n, groups, gs = part.codes.shape
    return QTensor(format=fmt.name, shape=(n, groups * gs), group_size=gs, codes=part.codes,
                   scales=part.scales, zeros=part.zeros, meta=part.meta,
                   global_scale=part.global_scale, opts=dict(part.opts))


def _concat(parts: list[Encoded]) -> Encoded:
    if len(parts) == 1:
        return parts[0]

    def cat(name: str) -> torch.Tensor | None:
        first = getattr(parts[0], name)
        return None if first is None else torch.cat([getattr(p, name) for p in parts])

    return dataclasses.replace(parts[0], codes=cat("codes"), scales=cat("scales"),
                               zeros=cat("zeros"), meta=cat("meta"))

"""The canonical pass (base.py `Format._canonicalize`), on the groups that can need it.

Re-encoding every group's dequantized values costs another search, most of the time spent on
groups whose encoding is the only exact one anyway. A format may name the groups that could
have another exact encoding (`Format._ambiguous_groups`, e.g. fp4.py's test on the codes); the
pass then re-encodes only those groups, gathered one per row (with the per-tensor `absmax`
passed along, so NVFP4's global scale and top blocks are those of the whole tensor), or the
whole rows holding them when the scale rule looks at the whole row (pow2-row), and copies the
results back. Every other group keeps its encoding, which is exactly what re-encoding it would
have returned.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable

import torch

from qcompiler.formats.qtensor import QTensor
from qcompiler.formats.scale_search import ErrorMeasure, stream_capturing

if TYPE_CHECKING:
    from qcompiler.formats.base import Encoded, Format

PARTS = ("codes", "scales", "zeros", "meta")


def canonicalize(fmt: Format, enc: Encoded, search: str, opts: dict[str, Any],
                 absmax: torch.Tensor | None) -> Encoded:
    # selecting the groups reads their count on the host; a CUDA graph capture (a KV4 cache
    # quantizing a decode step) cannot synchronize, so it re-encodes every group (same result)
    maybe = None if stream_capturing() else fmt._ambiguous_groups(enc, opts)
    if maybe is None:
        return _canonicalize_all(fmt, enc, search, opts, absmax)
    if opts.get("scale") == "pow2-row":  # the row's groups share the row scale: whole rows
        maybe = maybe.any(-1, keepdim=True).expand_as(maybe)
    count = int(maybe.sum())
    if count == 0:
        return enc
    if count == maybe.numel():
        return _canonicalize_all(fmt, enc, search, opts, absmax)
    if opts.get("scale") == "pow2-row":
        rows = maybe[:, 0].nonzero()[:, 0]
        sub = _replace(enc, {k: _part(enc, k, lambda t: t[rows]) for k in PARTS})
        done = _canonicalize_all(fmt, sub, search, opts, absmax)
        return _replace(enc, {k: _put(getattr(enc, k), getattr(done, k), rows)
                              for k in PARTS})
    # every other rule encodes each group on its own: re-encode the selected groups as a
    # [count, 1, gs] tensor (one group per row)
    sub = _replace(enc, {k: _part(enc, k, lambda t: t[maybe].unsqueeze(1)) for k in PARTS})
    done = _canonicalize_all(fmt, sub, search, opts, absmax)
    return _replace(enc, {k: _put(getattr(enc, k), getattr(done, k), maybe) for k in PARTS})


def _part(enc: Encoded, name: str, take: Callable[[torch.Tensor], torch.Tensor],
          ) -> torch.Tensor | None:
    t = getattr(enc, name)
    return None if t is None else take(t)


def _put(full: torch.Tensor | None, part: torch.Tensor | None,
         where: torch.Tensor) -> torch.Tensor | None:
    """`full` with `part` written at `where` (row indices, or an [N, G] group mask with `part`
    holding one group per row)."""
    if full is None or part is None:
        return full
    out = full.clone()
    if where.dtype == torch.bool:
        part = part.reshape((-1,) + tuple(full.shape[2:]))
    out[where] = part
    return out


def _replace(enc: Encoded, parts: dict[str, torch.Tensor | None]) -> Encoded:
    return dataclasses.replace(enc, **parts)


def _canonicalize_all(fmt: Format, enc: Encoded, search: str, opts: dict[str, Any],
                      absmax: torch.Tensor | None) -> Encoded:
    n, groups, gs = enc.codes.shape
    first = QTensor(format=fmt.name, shape=(n, groups * gs), group_size=gs, codes=enc.codes,
                    scales=enc.scales, zeros=enc.zeros, meta=enc.meta,
                    global_scale=enc.global_scale, opts=dict(enc.opts))
    values = fmt._decode(enc.codes, first)
    again = fmt._encode(values, search, ErrorMeasure(None, gs, fmt.name), opts, absmax)
    if again.global_scale is not None and not torch.equal(again.global_scale, enc.global_scale):
        return enc
    second = QTensor(format=fmt.name, shape=first.shape, group_size=gs, codes=again.codes,
                     scales=again.scales, zeros=again.zeros, meta=again.meta,
                     global_scale=again.global_scale, opts=dict(again.opts))
    take = (fmt._decode(again.codes, second) == values).all(-1)  # [N, G]

    def pick(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
        if a is None or b is None:
            return a
        return torch.where(take.reshape(take.shape + (1,) * (a.dim() - 2)), b, a)

    return _replace(enc, {k: pick(getattr(enc, k), getattr(again, k)) for k in PARTS})

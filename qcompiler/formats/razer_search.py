"""RaZeR's joint (scale, special value) search under the weight-MSE objective: razer.py's
`search_special`, same result, less work.

Why: NVFP4-RaZeR's search is 8 clip ratios x 3 special-value ranges + 4 local steps, each an FP4
rounding of the whole block and a gain pass per special value. Two facts let it skip work
without changing a number:

- a special-value range whose scale equals the plain FP4 scale for a group (for every group one
  of the +8 and -8 ranges does: the one on the side of its smaller extreme) gives that group
  the same FP4 rounding as the plain scale. Each ratio rounds every group at the plain scale
  once, and the other ranges' own scales are packed into as few more roundings as their groups
  allow (`_layers`): 2 roundings per ratio instead of 3;
- a special value m gains nothing (its gain is exactly 0, `gain_floor`) where |w| / scale is at
  most the midpoint between m and the FP4 magnitude under it; when no group that uses it
  reaches that, its gain pass is skipped (+-8 at the ratios that do not clip).

Every error is computed by the same float operations as in razer.py (elementwise ops, the
groups' `sum(-1)` and `einsum`, which reduce each group on its own), the candidates are offered
in the same order with the same bans and strict-improvement rule, so the chosen scales and
special values are identical: tests/formats/test_golden.py checks the bytes. The scales of all
clip ratios are snapped in one call when `snap` acts elementwise.
"""

from __future__ import annotations

from typing import Callable

import torch

from qcompiler.formats.fp4 import FP4_GRID, FP4_MAGNITUDES
from qcompiler.formats.grid_format import fit_scale, group_extremes
from qcompiler.formats.scale_search import (RunningBest, clip_ratios, refine_steps, safe,
                                            with_extra)

FP4_MAX = 6.0
Range = tuple[float, float]


def gain(a: torch.Tensor, dq2: torch.Tensor, v: float | torch.Tensor) -> torch.Tensor:
    """Per element, how much the squared error drops if |v| replaces the FP4 value (>= 0;
    0 on ties: the FP4 value is kept). a: magnitudes |w| / scale, dq2: their FP4 squared error."""
    e = (a - v).square_()
    return torch.sub(dq2, e, out=e).clamp_(min=0)


def gain_floor(m: float) -> float:
    """A float32 t such that `gain(a, dq2, m)` is exactly 0 wherever a <= t.

    With f the largest FP4 magnitude <= m, every a <= (m + f) / 2 is at least as close to f as
    to m, so its nearest FP4 value q is too: |q - a| <= |a - m|. Rounding is monotone, so the
    computed squares keep that order and dq2 - (a - m)^2 <= 0, clamped to 0.
    """
    f = max(x for x in FP4_MAGNITUDES if x <= m)
    t = torch.tensor((m + f) / 2, dtype=torch.float32)
    if float(t) > (m + f) / 2:
        t = torch.nextafter(t, torch.tensor(0.0))
    return float(t)


def search(wg: torch.Tensor, specials: tuple[float, ...], ranges: dict[Range, list[int]],
           bits: int, search_mode: str, snap: Callable[[torch.Tensor], torch.Tensor],
           extra: tuple[float, ...] = (), unclipped: torch.Tensor | None = None,
           elementwise_snap: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """razer.py `search_special` under weight MSE (same arguments; `ranges` =
    `special_ranges(specials)`): (scale [N, G, 1], special index [N, G] int64), same values."""
    n, g, _ = wg.shape
    ext = group_extremes(wg)
    blk = _Block(wg, ext)
    plain = fit_scale(wg, FP4_MAX, -FP4_MAX, ext)
    bases = {rng: fit_scale(wg, rng[0], rng[1], ext) for rng in ranges}
    own = {rng: bases[rng] != plain for rng in ranges}  # [N, G, 1]: not the plain scale
    layers = _layers(ranges, own)
    ratios = with_extra(clip_ratios(bits, search_mode), extra)
    rt = torch.tensor(ratios, dtype=torch.float32)  # x * r == x * float32(r) in torch

    def snapped(base: torch.Tensor) -> torch.Tensor:  # [R, N, G, 1]: snap(base * r) per ratio
        if elementwise_snap:
            return snap(base * rt.view(-1, 1, 1, 1))
        return torch.stack([snap(base * r) for r in ratios])

    s_plain = snapped(plain)
    later = {rng for layer in layers[1:] for rng in layer}
    scales = {rng: snapped(bases[rng]) for rng in later}
    best = RunningBest()
    inf = torch.tensor(float("inf"))
    for k, r in enumerate(ratios):
        if best.exact():  # re-quantizing exact values: nothing later can win
            break
        errors = _ratio_errors(blk, specials, ranges, layers, s_plain[k],
                               {rng: s[k] for rng, s in scales.items()})
        ratio = rt[k].expand(n, g, 1)
        for rng, idxs in ranges.items():
            banned = None
            if unclipped is not None:
                banned = unclipped & (own[rng][..., 0] | (r < 1))
            for i in idxs:
                err = errors[i] if banned is None else torch.where(banned, inf, errors[i])
                best.offer(err, ratio=ratio, meta=torch.full((n, g), i, dtype=torch.int64))
    meta = best["meta"]
    base = torch.zeros_like(plain)
    for rng, idxs in ranges.items():
        chosen = torch.isin(meta, torch.tensor(idxs)).unsqueeze(-1)
        base = torch.where(chosen, bases[rng], base)
    if search_mode != "rtn" and not best.exact():
        special = torch.tensor(specials, dtype=torch.float32)[meta].unsqueeze(-1)
        mag = special.abs()
        match = torch.where(special > 0, blk.pos, 1.0 - blk.pos) * (wg != 0)
        for step in refine_steps(bits):
            center = best["ratio"]
            for d in (step, -step):
                ratio = (center + d).clamp(min=0.05, max=1.0)
                rd = _Rounded(blk, snap(base * ratio))
                gn = gain(rd.a, rd.dq2, mag)
                err = (rd.plain - torch.einsum("ngi,ngi->ng", gn, match)) * rd.s2
                if unclipped is not None:
                    err = torch.where(unclipped & (ratio[..., 0] < 1), inf, err)
                best.offer(err, ratio=ratio, meta=meta)
    return snap(base * best["ratio"]), meta


class _Block:
    """A block's groups [N, G, gs]: |w|, the positive-element mask, max |w| per group (from
    the groups' (max, min), exact; only compared with thresholds, so a zero's sign is moot)."""

    def __init__(self, wg: torch.Tensor, ext: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.absw = wg.abs()
        self.pos = (wg > 0).to(torch.float32)
        self.amax = torch.maximum(ext[0], -ext[1])[..., 0]


class _Rounded:
    """The FP4 rounding of every group at its scale s [N, G, 1]: a = |w| / s, dq2, the plain
    error and s^2 [N, G]."""

    def __init__(self, blk: _Block, s: torch.Tensor) -> None:
        div = safe(s)
        self.a = blk.absw / div
        self.dq2 = FP4_GRID.magnitude_error(self.a).square_()
        self.plain = self.dq2.sum(-1)
        self.s2 = s[..., 0].square()
        self.amax_y = blk.amax / div[..., 0]  # = max of a per group: division is monotone

    def gains(self, blk: _Block, v: float, users: torch.Tensor,
              ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(gain on positive elements, total gain) of |v| per group; None when it is 0 for
        every group in `users` [N, G] bool (`gain_floor`)."""
        if not bool((users & (self.amax_y > gain_floor(v))).any()):
            return None
        gn = gain(self.a, self.dq2, v)
        return torch.einsum("ngi,ngi->ng", gn, blk.pos), gn.sum(-1)


def _layers(ranges: dict[Range, list[int]], own: dict[Range, torch.Tensor],
            ) -> list[dict[Range, torch.Tensor]]:
    """The roundings of one ratio: each maps ranges to the groups [N, G] bool it serves for
    them. Layer 0, at the plain scale, serves every range on the groups where its scale is the
    plain one; each later layer rounds at the ranges' own scales, no group claimed twice."""
    layers: list[dict[Range, torch.Tensor]] = [{rng: ~own[rng][..., 0] for rng in ranges}]
    for rng in ranges:
        mine = own[rng][..., 0]
        if not bool(mine.any()):
            continue
        for layer in layers[1:]:
            if not any(bool((mine & mask).any()) for mask in layer.values()):
                layer[rng] = mine
                break
        else:
            layers.append({rng: mine})
    return layers


def _ratio_errors(blk: _Block, specials: tuple[float, ...], ranges: dict[Range, list[int]],
                  layers: list[dict[Range, torch.Tensor]], s_plain: torch.Tensor,
                  scales: dict[Range, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Error [N, G] of every special value at its range's scale for one clip ratio."""
    errors: dict[int, torch.Tensor] = {}
    for li, layer in enumerate(layers):
        s = s_plain
        for rng, mask in layer.items() if li else ():
            s = torch.where(mask.unsqueeze(-1), scales[rng], s)
        rd = _Rounded(blk, s)
        cache: dict[float, tuple[torch.Tensor, torch.Tensor] | None] = {}
        for rng, mask in layer.items():
            for i in ranges[rng]:
                m = abs(specials[i])
                if m not in cache:
                    users = torch.zeros_like(mask)
                    for r2, m2 in layer.items():
                        if any(abs(specials[j]) == m for j in ranges[r2]):
                            users |= m2
                    cache[m] = rd.gains(blk, m, users)
                got = cache[m]
                if got is None:  # on_pos = total = +0, and plain - 0 = plain
                    err = rd.plain * rd.s2
                else:
                    on_pos, total = got
                    err = (rd.plain - (on_pos if specials[i] > 0 else total - on_pos)) * rd.s2
                errors[i] = err if li == 0 else torch.where(mask, err, errors[i])
    return errors

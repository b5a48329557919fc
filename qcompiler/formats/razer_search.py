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

import ctypes
from typing import Callable

import torch

from qcompiler.formats.fp4 import FP4_GRID, FP4_MAGNITUDES
from qcompiler.formats.grid_format import fit_scale, group_extremes
from qcompiler.formats.native import razer as native
from qcompiler.formats.scale_search import (RunningBest, clip_ratios, refine_steps, safe,
                                            with_extra)

FP4_MAX = 6.0
Range = tuple[float, float]


def special_ranges(specials: tuple[float, ...]) -> dict[tuple[float, float], list[int]]:
    """Group the special values by the grid range [lo, hi] they give (same range, same scale)."""
    out: dict[tuple[float, float], list[int]] = {}
    for i, v in enumerate(specials):
        out.setdefault((max(FP4_MAX, v), -max(FP4_MAX, -v)), []).append(i)
    return out


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
           elementwise_snap: bool = False, lib: ctypes.CDLL | None = None,
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """razer.py `search_special` under weight MSE (same arguments; `ranges` =
    `special_ranges(specials)`): (scale [N, G, 1], special index [N, G] int64), same values.
    `lib`: native/razer_search.c, checked (razer_check.py `checked_lib`), runs the loops over
    groups where it supports the shape; None: the torch loops."""
    n, g, _ = wg.shape
    c = Candidates(wg, ranges, bits, search_mode, snap, extra, elementwise_snap)
    inf = torch.tensor(float("inf"))
    if lib is not None and wg.numel() > 0 and native.supported(wg, specials):
        w_lanes = native.lanes_weights(wg)
        best = coarse_native(lib, w_lanes, specials, ranges, c, unclipped)
        refine_error = refine_native(lib, w_lanes, n * g)
    else:
        blk = Block(wg, c.ext)
        best = coarse_torch(blk, specials, ranges, c, unclipped)
        refine_error = None
    meta = best["meta"]
    base = torch.zeros_like(c.plain)
    for rng, idxs in ranges.items():
        chosen = torch.isin(meta, torch.tensor(idxs)).unsqueeze(-1)
        base = torch.where(chosen, c.bases[rng], base)
    if search_mode != "rtn" and not best.exact():
        special = torch.tensor(specials, dtype=torch.float32)[meta].unsqueeze(-1)
        if refine_error is None:
            refine_error = refine_torch(wg, blk, special)
        for step in refine_steps(bits):
            center = best["ratio"]
            for d in (step, -step):
                ratio = (center + d).clamp(min=0.05, max=1.0)
                err = refine_error(snap(base * ratio), special)
                if unclipped is not None:
                    err = torch.where(unclipped & (ratio[..., 0] < 1), inf, err)
                best.offer(err, ratio=ratio, meta=meta)
    return snap(base * best["ratio"]), meta


class Candidates:
    """What both loops search: the groups' extremes, plain FP4 scale and each range's base
    scale, which ranges' scales differ from the plain one (`own`), the roundings per ratio
    (`_layers`), the ratios (Python floats and float32) and the snapped scales of every ratio
    [R, N, G, 1] at the plain scale and for each range rounded in a later layer."""

    def __init__(self, wg: torch.Tensor, ranges: dict[Range, list[int]], bits: int,
                 search_mode: str, snap: Callable[[torch.Tensor], torch.Tensor],
                 extra: tuple[float, ...], elementwise_snap: bool) -> None:
        self.ext = group_extremes(wg)
        self.plain = fit_scale(wg, FP4_MAX, -FP4_MAX, self.ext)
        self.bases = {rng: fit_scale(wg, rng[0], rng[1], self.ext) for rng in ranges}
        self.own = {rng: self.bases[rng] != self.plain for rng in ranges}  # [N, G, 1]
        self.layers = _layers(ranges, self.own)
        self.ratios = with_extra(clip_ratios(bits, search_mode), extra)
        self.rt = torch.tensor(self.ratios, dtype=torch.float32)  # x * r == x * float32(r)

        def snapped(base: torch.Tensor) -> torch.Tensor:  # snap(base * r) per ratio
            if elementwise_snap:
                return snap(base * self.rt.view(-1, 1, 1, 1))
            return torch.stack([snap(base * r) for r in self.ratios])

        self.s_plain = snapped(self.plain)
        later = {rng for layer in self.layers[1:] for rng in layer}
        self.scales = {rng: snapped(self.bases[rng]) for rng in later}


def coarse_torch(blk: Block, specials: tuple[float, ...], ranges: dict[Range, list[int]],
            c: Candidates, unclipped: torch.Tensor | None) -> RunningBest:
    """The coarse loop in torch: every clip ratio x every special value, in offer order."""
    n, g = blk.amax.shape
    best = RunningBest()
    inf = torch.tensor(float("inf"))
    layers, own, ratios, rt, s_plain, scales = (c.layers, c.own, c.ratios, c.rt, c.s_plain,
                                                c.scales)
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
    return best


def refine_torch(wg: torch.Tensor, blk: Block, special: torch.Tensor,
                  ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Error [N, G] at scales s [N, G, 1], each group with its special value [N, G, 1]; the
    special's gain counts on the elements of its sign."""
    mag = special.abs()
    match = torch.where(special > 0, blk.pos, 1.0 - blk.pos) * (wg != 0)

    def error(s: torch.Tensor, _special: torch.Tensor) -> torch.Tensor:
        rd = _Rounded(blk, s)
        gn = gain(rd.a, rd.dq2, mag)
        return (rd.plain - torch.einsum("ngi,ngi->ng", gn, match)) * rd.s2

    return error


def coarse_native(lib: ctypes.CDLL, w_lanes: torch.Tensor, specials: tuple[float, ...],
                   ranges: dict[Range, list[int]], c: Candidates,
                   unclipped: torch.Tensor | None) -> RunningBest:
    """`_coarse` in C (native/razer_search.c), same errors, same offers, same result."""
    layers, own, ratios, rt, s_plain, scales = (c.layers, c.own, c.ratios, c.rt, c.s_plain,
                                                c.scales)
    r, n, g, _ = s_plain.shape
    m = n * g
    range_of = {i: rng for rng, idxs in ranges.items() for i in idxs}
    layer_scales = []
    for li, layer in enumerate(layers):
        s = s_plain
        for rng, mask in layer.items() if li else ():
            s = torch.where(mask.unsqueeze(-1), scales[rng], s)
        layer_scales.append(s)
    lscale = native.lanes(torch.stack(layer_scales, 1), m, torch.float32, lead=2)
    zeros = torch.zeros(n, g, dtype=torch.bool)
    serve = native.lanes(torch.stack([
        torch.stack([layer.get(range_of[i], zeros) if li else zeros
                     for i in range(len(specials))])
        for li, layer in enumerate(layers)]), m, torch.uint8, lead=2)
    own_i = native.lanes(torch.stack([own[range_of[i]][..., 0] for i in range(len(specials))]),
                         m, torch.uint8, lead=1)
    unc = None if unclipped is None else native.lanes(unclipped, m, torch.uint8)
    order = [i for idxs in ranges.values() for i in idxs]
    floors = [gain_floor(abs(v)) for v in specials]
    clips = [x < 1 for x in ratios]
    got = native.coarse(lib, w_lanes, lscale, specials, floors, order, serve, own_i, unc, clips)
    exact_at = got.exact_at[:m]
    if bool((exact_at < r).all()):
        # torch's loop stops before ratio k once every group is exact: offer only up to there
        stop = int(exact_at.max()) + 1
        if stop < r:
            got = native.coarse(lib, w_lanes, lscale[:stop].contiguous(), specials, floors,
                                order, serve, own_i, unc, clips[:stop])
    best = RunningBest()
    best.err = got.err[:m].view(n, g)
    best.state = {"ratio": rt[got.ratio[:m].long()].view(n, g, 1),
                  "meta": got.meta[:m].long().view(n, g)}
    return best


def refine_native(lib: ctypes.CDLL, w_lanes: torch.Tensor, m: int,
                  ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`refine_torch` in C, for groups laid out as lanes (native/razer.py)."""
    error = native.refine_error(lib, w_lanes)

    def at(s: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
        n, g, _ = s.shape
        return error(native.lanes(s, m, torch.float32),
                     native.lanes(special, m, torch.float32))[:m].view(n, g)

    return at


class Block:
    """A block's groups [N, G, gs]: |w|, the positive-element mask, max |w| per group (from
    the groups' (max, min), exact; only compared with thresholds, so a zero's sign is moot)."""

    def __init__(self, wg: torch.Tensor, ext: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.absw = wg.abs()
        self.pos = (wg > 0).to(torch.float32)
        self.amax = torch.maximum(ext[0], -ext[1])[..., 0]


class _Rounded:
    """The FP4 rounding of every group at its scale s [N, G, 1]: a = |w| / s, dq2, the plain
    error and s^2 [N, G]."""

    def __init__(self, blk: Block, s: torch.Tensor) -> None:
        div = safe(s)
        self.a = blk.absw / div
        self.dq2 = FP4_GRID.magnitude_error(self.a).square_()
        self.plain = self.dq2.sum(-1)
        self.s2 = s[..., 0].square()
        self.amax_y = blk.amax / div[..., 0]  # = max of a per group: division is monotone

    def gains(self, blk: Block, v: float, users: torch.Tensor,
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


def _ratio_errors(blk: Block, specials: tuple[float, ...], ranges: dict[Range, list[int]],
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

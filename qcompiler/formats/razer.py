"""RaZeR (arXiv 2501.04052): FP4 E2M1 whose redundant -0 code is a per-group special value.

Codes are FP4 codes (bit 3 sign, bits 0..2 magnitude index into 0, .5, 1, 1.5, 2, 3, 4, 6), except
that code 8 (the -0 pattern) decodes to the group's special value `specials[meta]` (in units of the
group scale): value = scale * (code == 8 ? specials[meta] : fp4[code]). Default special set
(+5, -5, +8, -8), the authors' weight quantizer (FORMATS.md; the authors' blog lists the same four
for FP4-RaZeR, and the NVFP4-RaZeR script `quant_nvfp4_razer_e3m3` searches the same set), so
meta is 2 bits per group. Storage: fp16 scale + 2-bit index per group (we keep meta in a uint8
tensor; bits_per_weight counts 2 bits).

Per group and per special value v the grid is {FP4 values} U {v}; its scale maps the group onto
[-max(6, -v), max(6, v)] (the scripts use absmax / max(6, |v|); ours never clips the side that v
does not extend, and equals theirs when the group's extreme has v's sign). The group keeps the
(v, scale) pair with the smallest error; with `search="clip"` the pair is searched jointly with
the clip ratios. Rounding is nearest: the FP4 value unless the special value is strictly closer
(a tie keeps the FP4 value), FP4 ties to even code.

KV-cache variant (`razer4-kv`): the paper applies RaZeR to keys and values too. The stored copies
of the paper we could reach show only its abstract ("can be seamlessly integrated with
quantization algorithms for both weights and KV-cache"), not the KV special set or granularity;
our choice, recorded here: the same special set (overridable with `specials=`), groups along the
head dimension of each token (quantize-kv's default is the whole head_dim: one scale per token
and head; groups of 8 to 128, so tiny heads such as stories260k's 8 fit), and no clip search
by default because KV quantization runs online at decode time (the special-value choice, 4
candidates, is still made per group).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from qcompiler.errors import QCompilerError
from qcompiler.formats import fastround, razer_check, razer_search
from qcompiler.formats.base import Encoded, Format, QTensor
from qcompiler.formats.fp4 import (FP4_GRID, FP4_VALUES, NEG_ZERO_CODE, ambiguous_groups,
                                   codes_used)
from qcompiler.formats.grid_format import SCALE_MODES, fit_scale, group_extremes, scale_snapper
from qcompiler.formats.razer_search import special_ranges
from qcompiler.formats.scale_search import (ErrorMeasure, RunningBest, clip_ratios, refine_steps,
                                            safe, stream_capturing, with_extra)

RAZER_SPECIALS = (5.0, -5.0, 8.0, -8.0)
FP4_MAX = 6.0


def razer_codes(y: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
    """Nearest code on {FP4} U {special} (special broadcast per group): ties keep FP4, FP4 ties
    go to the even code. Distances are taken on magnitudes: |(+-m) - y| = |m - |y|| exactly when
    m carries y's sign, so the sign is only put into the code (no torch.where: ~10x cheaper)."""
    ay = y.abs()
    mag, codes = fastround.e2m1(ay, True)
    assert codes is not None
    use = (special - y).abs_() < (mag - ay).abs_()
    codes |= ((y < 0) & (mag != 0)).to(torch.int32) << 3
    codes += use * (NEG_ZERO_CODE - codes)
    return codes.to(torch.uint8)


def search_special(wg: torch.Tensor, specials: tuple[float, ...], bits: int, search: str,
                   measure: ErrorMeasure, snap: Callable[[torch.Tensor], torch.Tensor],
                   extra: tuple[float, ...] = (), unclipped: torch.Tensor | None = None,
                   elementwise_snap: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group: (scale [N, G, 1] as `snap` stores it, special index [N, G] int64) of least error.

    Coarse clip ratios (then `extra` ratios, also under "rtn") x every special value jointly;
    then the local ratio steps of scale_search.py for each group's chosen special value.
    Specials sharing a grid range share one FP4 rounding. Groups in the `unclipped` mask [N, G]
    only get candidates that neither clip nor reach past the FP4 range on their absmax's side
    (ratio >= 1, and a special range whose scale is the plain absmax / 6): NVFP4-RaZeR's blocks
    that set the global scale (nvfp4.py explains why).

    On the CPU under weight MSE razer_search.py returns the same result with less work (its
    loops in C where razer_check.py finds them bit-identical to its torch loops; it
    reads counts on the host, which a CUDA graph capture cannot: a capturing stream, on any
    device, takes this loop); this loop serves the rest.
    `elementwise_snap`: `snap` acts elementwise, so all ratios' scales can be snapped at once.
    """
    if not measure.uses_activations and wg.device.type == "cpu" and not stream_capturing():
        return razer_search.search(wg, specials, special_ranges(specials), bits, search, snap,
                                   extra, unclipped, elementwise_snap,
                                   lib=razer_check.checked_lib())
    return dense_search(wg, specials, bits, search, measure, snap, extra, unclipped)


def dense_search(wg: torch.Tensor, specials: tuple[float, ...], bits: int, search: str,
                 measure: ErrorMeasure, snap: Callable[[torch.Tensor], torch.Tensor],
                 extra: tuple[float, ...] = (), unclipped: torch.Tensor | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """`search_special` evaluating every candidate on every group (any device, any objective)."""
    n, g, _ = wg.shape
    ranges = special_ranges(specials)
    ext = group_extremes(wg)
    bases = {rng: fit_scale(wg, rng[0], rng[1], ext) for rng in ranges}
    plain = fit_scale(wg, FP4_MAX, -FP4_MAX, ext)
    error = _SpecialError(wg, measure)
    best = RunningBest()
    inf = torch.tensor(float("inf"), device=wg.device)
    for r in with_extra(clip_ratios(bits, search), extra):
        if best.exact():  # re-quantizing exact values: nothing later can win
            break
        for rng, idxs in ranges.items():
            s = snap(bases[rng] * r)
            ratio = torch.full_like(s, r)
            banned = None
            if unclipped is not None:
                banned = unclipped & ((bases[rng] != plain)[..., 0] | (r < 1))
            for i, err in zip(idxs, error.for_specials(s, [specials[i] for i in idxs])):
                idx = torch.full((n, g), i, dtype=torch.int64, device=wg.device)
                if banned is not None:
                    err = torch.where(banned, inf, err)
                best.offer(err, ratio=ratio, meta=idx)
    meta = best["meta"]
    base = torch.zeros_like(wg[..., :1])
    for rng, idxs in ranges.items():
        chosen = torch.isin(meta, torch.tensor(idxs, device=wg.device)).unsqueeze(-1)
        base = torch.where(chosen, bases[rng], base)
    if search != "rtn" and not best.exact():
        special = torch.tensor(specials, dtype=torch.float32, device=wg.device)[meta].unsqueeze(-1)
        error_at = error.for_group_special(special)
        for step in refine_steps(bits):
            center = best["ratio"]
            for d in (step, -step):
                ratio = (center + d).clamp(min=0.05, max=1.0)
                err = error_at(snap(base * ratio))
                if unclipped is not None:
                    err = torch.where(unclipped & (ratio[..., 0] < 1), inf, err)
                best.offer(err, ratio=ratio, meta=meta)
    return snap(base * best["ratio"]), meta


def canonical_meta(codes: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """meta [N, G] with 0 for groups that never use the special code: such a group decodes the
    same under any special value, and index 0 is the one a re-quantization picks first, so this
    keeps quantization idempotent in the metadata too."""
    used = (codes_used(codes) >> NEG_ZERO_CODE) & 1
    return meta * used.to(meta.dtype)


class _SpecialError:
    """Errors of RaZeR candidates. With a weight-MSE objective it works on |w| and squared
    errors: a special value v can only win on elements of v's sign, where its squared error is
    (|y| - |v|)^2, so one pass serves +v and -v. Otherwise (output MSE) the signed path."""

    def __init__(self, wg: torch.Tensor, measure: ErrorMeasure) -> None:
        self.wg = wg
        self.measure = measure
        self.fast = not measure.uses_activations
        if self.fast:
            self.absw = wg.abs()
            self.pos = (wg > 0).to(torch.float32)

    def for_specials(self, s: torch.Tensor, values: list[float]) -> list[torch.Tensor]:
        """Error per group [N, G] for each special value in `values`, all at scale s."""
        if not self.fast:
            y = self.wg / safe(s)
            dq = FP4_GRID.round_values(y) - y
            out = []
            for v in values:
                dv = v - y
                out.append(self.measure(torch.where(dv.abs() < dq.abs(), dv, dq), s))
            return out
        a = self.absw / safe(s)
        dq2 = FP4_GRID.magnitude_error(a).square_()
        plain = dq2.sum(-1)
        s2 = s[..., 0].square()
        out = []
        gains: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
        for v in values:
            if abs(v) not in gains:
                gain = self._gain(a, dq2, abs(v))
                gains[abs(v)] = (torch.einsum("ngi,ngi->ng", gain, self.pos), gain.sum(-1))
            on_pos, total = gains[abs(v)]
            out.append((plain - (on_pos if v > 0 else total - on_pos)) * s2)
        return out

    def for_group_special(self, special: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """Function: scale -> error per group, each group with its own special [N, G, 1]."""
        if not self.fast:
            def signed(s: torch.Tensor) -> torch.Tensor:
                y = self.wg / safe(s)
                dq = FP4_GRID.round_values(y) - y
                dv = special - y
                return self.measure(torch.where(dv.abs() < dq.abs(), dv, dq), s)
            return signed
        match = torch.where(special > 0, self.pos, 1.0 - self.pos) * (self.wg != 0)
        mag = special.abs()

        def fast(s: torch.Tensor) -> torch.Tensor:
            a = self.absw / safe(s)
            dq2 = FP4_GRID.magnitude_error(a).square_()
            gain = torch.einsum("ngi,ngi->ng", self._gain(a, dq2, mag), match)
            return (dq2.sum(-1) - gain) * s[..., 0].square()

        return fast

    _gain = staticmethod(razer_search.gain)


@dataclass(frozen=True)
class RazerFormat(Format):
    """FP4 with the -0 code remapped to one of `specials`, chosen per group."""

    canonical_pass: ClassVar[bool] = True  # several exact encodings per group: base.py

    specials: tuple[float, ...] = RAZER_SPECIALS

    @property
    def meta_bits(self) -> int:
        return max(1, math.ceil(math.log2(len(self.specials))))

    def group_overhead_bits(self) -> int:
        return 16 + self.meta_bits

    def codebook(self, meta: int | None = None, specials: tuple[float, ...] | None = None,
                 **opts: Any) -> torch.Tensor:
        """[len(specials), 16]: row i is the code table when the group's meta is i (or row `meta`)."""
        sv = self._specials({"specials": specials} if specials is not None else {})
        rows = torch.tensor(FP4_VALUES, dtype=torch.float32).repeat(len(sv), 1)
        rows[:, NEG_ZERO_CODE] = torch.tensor(sv, dtype=torch.float32)
        return rows if meta is None else rows[meta]

    def _ambiguous_groups(self, enc: Encoded, opts: dict[str, Any]) -> torch.Tensor | None:
        return ambiguous_groups(enc.codes, enc.meta, self._specials(opts))

    def _encode(self, wg: torch.Tensor, search: str, measure: ErrorMeasure,
                opts: dict[str, Any], absmax: torch.Tensor | None = None) -> Encoded:
        specials = self._specials(opts)
        mode = opts.get("scale", "fp16")
        snap = scale_snapper(mode, fit_scale(wg, FP4_MAX, -FP4_MAX))
        s, meta = search_special(wg, specials, self.bits, search, measure, snap,
                                 elementwise_snap=mode != "pow2-row")
        special = torch.tensor(specials, dtype=torch.float32, device=wg.device)[meta].unsqueeze(-1)
        codes = razer_codes(wg / safe(s), special)
        meta = canonical_meta(codes, meta)
        out_opts: dict[str, Any] = {}
        if mode != "fp16":
            out_opts["scale"] = mode
        if specials != self.specials:
            out_opts["specials"] = list(specials)
        return Encoded(codes=codes, scales=s[..., 0].to(torch.float16),
                       meta=meta.to(torch.uint8), opts=out_opts)

    def _decode(self, codes: torch.Tensor, q: QTensor) -> torch.Tensor:
        assert q.meta is not None
        table = torch.tensor(FP4_VALUES, dtype=torch.float32, device=codes.device)
        specials = torch.tensor(self._specials(q.opts), dtype=torch.float32, device=codes.device)
        special = specials[q.meta.long()].unsqueeze(-1)
        vals = torch.where(codes == NEG_ZERO_CODE, special, table[codes.long()])
        return vals * q.scales.to(torch.float32).unsqueeze(-1)

    def _specials(self, opts: dict[str, Any]) -> tuple[float, ...]:
        sv = opts.get("specials")
        if sv is None:
            return self.specials
        sv = tuple(float(v) for v in sv)
        if not 1 <= len(sv) <= 1 << self.meta_bits or any(not math.isfinite(v) or v == 0 for v in sv):
            raise QCompilerError(f"format '{self.name}': specials must be 1 to "
                                 f"{1 << self.meta_bits} finite non-zero values, got {list(sv)}")
        return sv


RAZER4 = RazerFormat(
    name="razer4", bits=4, default_group_size=128, group_sizes=(16, 32, 64, 128, 256),
    scale_type="fp16", has_zero_point=False, role="weight",
    description="RaZeR: FP4 with -0 remapped to a per-group special value (+-5, +-8), fp16 scale",
    options=(("scale", SCALE_MODES), ("specials", None)))

RAZER4_KV = RazerFormat(
    name="razer4-kv", bits=4, default_group_size=128, group_sizes=(8, 16, 32, 64, 128),
    scale_type="fp16", has_zero_point=False, role="activation", default_search="rtn",
    description="RaZeR for the KV cache: per-token groups along head_dim, online (no clip search)",
    options=(("specials", None),))

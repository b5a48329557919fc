"""`GridFormat`: a fixed code table times one fp16 scale per group (FP4, NF4, dINT4, INT-sym, PoT).

Dequantized value = grid[code] * scale. The RTN scale maps the group's positive extreme onto the
grid's largest value and its negative extreme onto the grid's most negative value, whichever
needs the larger scale, so nothing is clipped (for a symmetric grid this is absmax / max|grid|).
`search="clip"` shrinks that scale by the ratios of scale_search.py.

Scales are rounded to fp16 BEFORE the codes are chosen, so the stored scale is the one the codes
were rounded against and dequantize(quantize(grid * s)) is exact for fp16 s.

FP formats accept ZeroQuant-FP's scale constraints (arXiv 2307.09782) so FP4 -> FP8 casting is a
shift: `scale="pow2"` (M1) rounds each group scale UP to a power of two (up, so the group still
fits the grid); `scale="pow2-row"` (M2) keeps one real scale per row (the largest group scale of
the row) and gives each group that scale times a power of two <= 1. The abstract confirms "two
scaling constraints"; the exact rule (ceil to a power of two, row maximum as the shared real
scale) is our reading of the paper's M1/M2 and is recorded here as our choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from qcompiler.formats.base import Encoded, Format, QTensor
from qcompiler.formats.grid import Grid
from qcompiler.formats.scale_search import (ErrorMeasure, pow2_ceil, safe, search_ratio,
                                            to_fp16_scale)

SCALE_MODES = ("fp16", "pow2", "pow2-row")


@dataclass(frozen=True)
class GridFormat(Format):
    """Fixed code table, fp16 per-group scale."""

    grid_def: Grid = Grid((0.0,))

    def codebook(self, **opts: Any) -> torch.Tensor:
        return self.grid_def.table()

    def needs_canonical_pass(self, opts: dict[str, Any]) -> bool:
        """Power-of-two scales make encodings ambiguous (a group whose codes all stay on the
        grid when doubled is also exact at half the scale): base.py's canonical pass fixes one."""
        return opts.get("scale", "fp16") != "fp16"

    def _ambiguous_groups(self, enc: Encoded, opts: dict[str, Any]) -> torch.Tensor | None:
        ambiguity = self.grid_def.ambiguity  # the FP4 grid's (fp4.py): a grid says its own
        return ambiguity(enc.codes) if ambiguity is not None else None

    def _encode(self, wg: torch.Tensor, search: str, measure: ErrorMeasure,
                opts: dict[str, Any], absmax: torch.Tensor | None = None) -> Encoded:
        snap = scale_snapper(opts.get("scale", "fp16"), self.rtn_scale(wg))
        s = self.search_scale(wg, search, measure, snap)
        codes = self.grid_def.codes(wg / safe(s))
        out_opts = {"scale": opts["scale"]} if opts.get("scale", "fp16") != "fp16" else {}
        return Encoded(codes=codes, scales=s[..., 0].to(torch.float16), opts=out_opts)

    def _decode(self, codes: torch.Tensor, q: QTensor) -> torch.Tensor:
        table = self.grid_def.table(codes.device)
        return table[codes.long()] * q.scales.to(torch.float32).unsqueeze(-1)

    # ---------------------------------------------------------------- shared pieces

    def rtn_scale(self, wg: torch.Tensor) -> torch.Tensor:
        """The no-clipping scale per group, [N, G, 1] float32 (0 for all-zero groups)."""
        return fit_scale(wg, self.grid_def.max_value, self.grid_def.min_value)

    def search_scale(self, wg: torch.Tensor, search: str, measure: ErrorMeasure,
                     snap: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The stored (fp16-exact) scale per group that minimises the error, [N, G, 1]."""
        base = self.rtn_scale(wg)
        if search == "rtn":
            return snap(base)
        error = scale_error(self.grid_def, wg, measure)
        ratio = search_ratio(lambda r: error(snap(base * r)), wg, self.bits, search)
        return snap(base * ratio)


def scale_error(grid: Grid, wg: torch.Tensor,
                measure: ErrorMeasure) -> Callable[[torch.Tensor], torch.Tensor]:
    """Function: scale [N, G, 1] -> error per group [N, G] of rounding wg onto `grid`.

    Under a weight-MSE objective a sign-magnitude grid rounds |w| instead of w: the same squared
    error without the sign handling, which is most of the cost of the search's hot loop.
    """
    magnitudes = grid.sign_bit is not None and not measure.uses_activations
    src = wg.abs() if magnitudes else wg

    def error(s: torch.Tensor) -> torch.Tensor:
        y = src / safe(s)
        dy = grid.magnitude_error(y) if magnitudes else grid.round_values(y) - y
        return measure(dy, s)

    return error


def fit_scale(wg: torch.Tensor, grid_max: float, grid_min: float,
              extremes: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Smallest scale putting every element of each group inside [grid_min, grid_max] * scale.
    `extremes`: the groups' (max, min) [N, G, 1] from `group_extremes`, when already known."""
    hi, lo = group_extremes(wg) if extremes is None else extremes
    return torch.maximum(hi.clamp(min=0) / grid_max, lo.clamp(max=0) / grid_min)


def group_extremes(wg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max, min) of each group, [N, G, 1] each: one pass, shared by several `fit_scale`s."""
    return wg.amax(-1, keepdim=True), wg.amin(-1, keepdim=True)


def scale_snapper(mode: str, rtn: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Function mapping candidate scales to storable ones under the scale constraint `mode`."""
    if mode == "fp16":
        return to_fp16_scale
    if mode == "pow2":
        return lambda s: to_fp16_scale(pow2_ceil(s))
    if mode == "pow2-row":
        row = to_fp16_scale(rtn.amax(dim=1, keepdim=True))  # [N, 1, 1], the shared real scale
        row_safe = safe(row)

        def snap(s: torch.Tensor) -> torch.Tensor:
            return to_fp16_scale(row * pow2_ceil(s / row_safe).clamp(max=1.0))

        return snap
    raise ValueError(f"unknown scale mode {mode!r}")

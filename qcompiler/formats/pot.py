"""Power-of-two formats pot4/pot3/pot2 (PoTPTQ, arXiv 2507.11959): value = +-scale * 2^-e.

Code layout: sign bit on top (bit b-1), exponent index e in the low b-1 bits, e = 0 .. 2^(b-1)-1;
no code is reserved for zero. Why no zero: the paper's GPU point is that dequantization is an
integer add of e into the fp16 exponent field of the scale with the sign handled separately
(3.67x on V100, 1.63x on RTX 4090 vs INT dequantization, per its abstract); a zero code would need
an extra select. Zero weights become +-scale * 2^-(2^(b-1)-1); an all-zero group gets scale 0 and
decodes to exact zeros. Rounding is nearest in the linear domain (ties to the even code), not
round(log2|w|): with absmax scales this reproduces FORMATS.md's pot4 reference (0.0362 relative
error on MiniLM g128), log-domain rounding gives 0.0396.

Two-step PTQ, as the abstract states it: "(i) initialize the quantization scales with a robust
starting point, and (ii) refine these scales using a minimal calibration set".
(i) Initialisation = the clip-ratio search of grid_format.py (weight MSE; with x, the groups'
    share of the output error).
(ii) Refinement, only when calibration activations x [T, K] are given (and search != "rtn"):
    with the codes fixed, ŵ is linear in the group scales, so the layer's output error
    ||x w^T - x ŵ^T||^2 is a quadratic in each row's scales; we solve it exactly (a G x G
    ridge-regularised system per row, cross-group terms included) instead of taking gradient
    steps on it, then re-round the codes under the new scales and repeat. A row keeps a new
    solution only if its full output error went down, so refinement never hurts. The paper's
    exact refinement procedure (gradient-based on the scales) was not in the stored text we
    could read; solving the same objective in closed form is our choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qcompiler.formats.base import Encoded
from qcompiler.formats.grid import Grid
from qcompiler.formats.grid_format import GridFormat
from qcompiler.formats.scale_search import ErrorMeasure, safe, to_fp16_scale

REFINE_ROUNDS = 3
ROW_CHUNK = 256  # rows per refinement chunk: bounds the [rows, G, K] intermediate


def pot_values(bits: int) -> tuple[float, ...]:
    n = 1 << (bits - 1)
    mags = tuple(2.0 ** -e for e in range(n))
    return mags + tuple(-m for m in mags)


@dataclass(frozen=True)
class PoTFormat(GridFormat):
    """Power-of-two grid with an fp16 scale per group and calibration-based scale refinement."""

    def chunk_rows(self, n: int, k: int, measure: ErrorMeasure, search: str) -> int:
        """The refinement solves over all rows at once (its K x K Hessian is built once per call,
        and its row blocks are ROW_CHUNK): no row blocks around it."""
        if measure.activations is not None and search != "rtn":
            return max(n, 1)
        return super().chunk_rows(n, k, measure, search)

    def _encode(self, wg: torch.Tensor, search: str, measure: ErrorMeasure,
                opts: dict[str, Any], absmax: torch.Tensor | None = None) -> Encoded:
        enc = super()._encode(wg, search, measure, opts)
        if measure.activations is None or search == "rtn":
            return enc
        s = refine_scales(self.grid_def, wg, enc.scales.to(torch.float32), measure.activations)
        codes = self.grid_def.codes(wg / safe(s.unsqueeze(-1)))
        return Encoded(codes=codes, scales=s.to(torch.float16), opts=enc.opts)


def refine_scales(grid: Grid, wg: torch.Tensor, s0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Scales [N, G] (fp16-exact float32) that lower ||x (w - ŵ)^T||^2 row by row.

    Alternates: codes under the current scales -> exact least-squares scales for those codes.
    Every candidate is judged with the codes re-rounded under it (what is stored), and a row
    only ever moves to a candidate with a smaller output error.
    """
    n, g, gs = wg.shape
    xf = x.reshape(-1, x.shape[-1]).to(torch.float32)
    h = (xf.T @ xf) / max(xf.shape[0], 1)  # [K, K]
    w = wg.reshape(n, g * gs)
    best_s = s0
    best_err = _row_error(w, _dequant(grid, wg, s0), h)
    s = s0
    for _ in range(REFINE_ROUNDS):
        codes = grid.round_values(wg / safe(s.unsqueeze(-1)))
        s = _solve_scales(codes, w, h, s)
        err = _row_error(w, _dequant(grid, wg, s), h)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better.unsqueeze(-1), s, best_s)
    return best_s


def _solve_scales(c: torch.Tensor, w: torch.Tensor, h: torch.Tensor, s0: torch.Tensor) -> torch.Tensor:
    """Per row: argmin_s (w - A s)^T H (w - A s) + lam |s - s0|^2, A = codes placed per group."""
    n, g, gs = c.shape
    h4 = h.reshape(g, gs, g, gs)
    hw = (w @ h).reshape(n, g, gs)  # H is symmetric
    out = []
    for lo in range(0, n, ROW_CHUNK):
        cc = c[lo:lo + ROW_CHUNK]
        t = torch.einsum("ngi,gihj->nghj", cc, h4)
        m = torch.einsum("nghj,nhj->ngh", t, cc).to(torch.float64)
        b = (cc * hw[lo:lo + ROW_CHUNK]).sum(-1).to(torch.float64)
        diag = torch.diagonal(m, dim1=-2, dim2=-1)
        lam = 1e-4 * diag.mean(-1, keepdim=True).clamp(min=1e-30)
        eye = torch.eye(g, dtype=torch.float64, device=c.device)
        sol = torch.linalg.solve(m + lam.unsqueeze(-1) * eye, b + lam * s0[lo:lo + ROW_CHUNK].double())
        out.append(sol.to(torch.float32))
    s = torch.cat(out)
    s = torch.where(torch.isfinite(s) & (s > 0), s, s0)
    return to_fp16_scale(s)


def _dequant(grid: Grid, wg: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """[N, K] values stored for scales s: codes re-rounded to nearest under s."""
    c = grid.round_values(wg / safe(s.unsqueeze(-1)))
    return (c * s.unsqueeze(-1)).reshape(c.shape[0], -1)


def _row_error(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    e = w - w_hat
    return ((e @ h) * e).sum(-1)


def _pot(bits: int) -> PoTFormat:
    return PoTFormat(
        name=f"pot{bits}", bits=bits, default_group_size=128, group_sizes=(16, 32, 64, 128, 256),
        scale_type="fp16", has_zero_point=False, role="weight",
        description=f"power-of-two {bits}-bit (sign + {bits - 1}-bit exponent), fp16 scale per "
                    f"group, PoTPTQ scale refinement with calibration data",
        grid_def=Grid(pot_values(bits), sign_bit=bits - 1))


POT4 = _pot(4)
POT3 = _pot(3)
POT2 = _pot(2)

"""`aqas`: activation-quantization-aware scaling (Lee et al., EMNLP 2023, the dINT paper).

    aqas{w-format=fp4,a-format=fp8-e4m3,group-size=128,grid=20}

SmoothQuant picks its per-channel scales from ranges alone; AWQ searches them against the
weight-only quantization error. Under W4A8 both operands are quantized, and a scale that helps
one hurts the other, so AQAS chooses s by the error of the *quantized* matmul:

    min_s  Σ_consumers ‖ Qa(X·diag(s)⁻¹) · Qw(W·diag(s))ᵀ − X·Wᵀ ‖²

on calibration rows X of the group's input. Our search (the paper's exact procedure was not
available to us; this is our choice, recorded here): the candidates are SmoothQuant's family
s(α) = max|X|^α / max|W|^(1−α) for α = 0, 1/grid, ..., 1, plus α = 0.5 (SmoothQuant's default)
and s = 1 (no scaling); the group keeps the candidate of least error. Because SmoothQuant's
α = 0.5 scale and the identity are candidates, on the calibration rows AQAS's W4A8 error is never
above smooth{alpha=0.5}'s or the unscaled model's (tests check this on injected outliers).

Qw is `w-format` at `group-size` with RTN (the final lower-datatype may search clip ratios on top),
Qa is `a-format` per token, both through the formats library. Groups, folding of 1/s and
statistics are shared with `smooth` (passes/smooth.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from qcompiler.errors import PassError, QCompilerError
from qcompiler.pass_registry import register_pass
from qcompiler.passes.smooth import (ScaleGroup, apply_scales, calibrate, find_groups,
                                     smooth_scales, weight_absmax)
from qcompiler.passes_base import Pass, PassContext, PassResult
from qcompiler.program import Program

MAX_SAMPLES = 512  # calibration rows per group the search evaluates


def w4a8_error(x: torch.Tensor, weights: list[torch.Tensor], s: torch.Tensor, w_format: Any,
               a_format: str, group_size: int | None) -> float:
    """Σ ‖Qa(x/s)·Qw(W·s)ᵀ − x·Wᵀ‖² over the weights (s per input channel of x); Qa is the
    qc.quantize_act reference (per token), Qw the weight format with RTN."""
    from qcompiler.act_ops import fake_quantize_act

    xq = fake_quantize_act(x / s[None, :], a_format, "token")
    total = 0.0
    for w in weights:
        ws = w * s[None, :]
        wq = w_format.dequantize(w_format.quantize(ws, group_size, search="rtn"))
        total += float(((xq @ wq.T) - (x @ w.T)).square().sum())
    return total


def candidate_scales(act: torch.Tensor, wmax: torch.Tensor, grid: int) -> list[torch.Tensor]:
    """s = 1, then SmoothQuant's s(α) for α = 0.5 and α on the grid."""
    alphas = dict.fromkeys([0.5] + [i / grid for i in range(grid + 1)])
    return [torch.ones_like(act)] + [smooth_scales(act, wmax, a) for a in alphas]


@register_pass
@dataclass(frozen=True)
class Aqas(Pass):
    """AQAS: per-channel scales chosen by the W4A8 output error (both operands quantized)."""

    name = "aqas"
    w_format: str = "fp4"
    a_format: Literal["fp8-e4m3", "int8"] = "fp8-e4m3"
    group_size: int | None = None  # None: the weight format's default
    grid: int = 20
    skip: tuple[str, ...] = ("lm_head",)

    def __post_init__(self) -> None:
        if self.grid < 1:
            raise ValueError(f"grid must be at least 1, got {self.grid}")

    def apply(self, program: Program, ctx: PassContext) -> PassResult:
        from qcompiler import formats

        try:
            w_fmt = formats.get(self.w_format)
        except QCompilerError as e:
            raise PassError(self.name, str(e).removeprefix("error: ")) from None
        if w_fmt.role not in ("weight", "both"):
            raise PassError(self.name, f"'{self.w_format}' is not a weight format; use e.g. "
                            "w-format=fp4 or int4")
        groups, skipped = find_groups(program, self.skip, self.name)
        for line in skipped:
            ctx.log(f"{self.name}: skipped {line}", level=2)
        if not groups:
            return PassResult(False, {"groups-changed": 0, "groups-skipped": len(skipped)})
        stats = calibrate(program, groups, ctx, max_samples=MAX_SAMPLES)
        gains = []
        for group in ctx.progress(groups, total=len(groups), desc=self.name):
            st = stats[group.layers[0]]
            s, base, best = self._search(program, group, st.samples, st.absmax, w_fmt,
                                           self.a_format)
            apply_scales(program, group, s)
            ctx.log(f"{self.name}: {group.describe()}", level=2)
            gains.append(f"{group.name} {base:.3g}->{best:.3g}")
        ctx.log(f"{self.name}: W4A8 error per group (unscaled->chosen): {'; '.join(gains)}")
        return PassResult(True, {"groups-changed": len(groups), "groups-skipped": len(skipped),
                                 "layers-changed": sum(len(g.layers) for g in groups)})

    def _search(self, program: Program, group: ScaleGroup, x: torch.Tensor, absmax: torch.Tensor,
                w_fmt: Any, a_fmt: str) -> tuple[torch.Tensor, float, float]:
        """The candidate of least W4A8 error (per producer channel), the unscaled and best error."""
        weights = [program.get_tensor(w).detach().to(torch.float32) for w in group.weights]
        act, wmax = group.reduce(absmax), weight_absmax(program, group)
        errors = []
        candidates = candidate_scales(act, wmax, self.grid)
        for s in candidates:
            try:
                errors.append(w4a8_error(x, weights, group.expand(s), w_fmt, a_fmt,
                                         self.group_size))
            except QCompilerError as e:
                raise PassError(self.name, f"{group.layers[0]}: "
                                f"{str(e).removeprefix('error: ')}") from None
        best = min(range(len(errors)), key=errors.__getitem__)
        return candidates[best], errors[0], errors[best]

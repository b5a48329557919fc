"""`clip`: choose each weight group's clipping (its scale) by measured error, and plan it.

    clip{format=razer4}                                   output error on calibration data
    clip{format=int4,group-size=64,objective=weight-mse}  weight error, no calibration
    clip{format=fp4,grid=1.0,0.95,0.9,0.85,0.8}           an explicit grid of clip ratios

The quantizing is the format's own: with the default (empty) `grid`, the format's clip search
(scale_search.py: 10 ratios per group, coarse then local) with `x` = a sample of the layer's
calibration inputs for `objective=output-mse` (each group minimises its share of
||x wᵀ − x ŵᵀ||²), none for `weight-mse`. With an explicit `grid`, each ratio r clamps every
group to r × its range and lets the format quantize that with no search (so the codes and
parameters are the format's), and each group keeps the ratio with the smallest error (ratio
order breaks ties, so list 1.0 first to never lose to RTN). The result is a weight plan
(qcompiler/weight_plan.py) that lower-datatype uses as is. When the row samples of all layers
exceed the calibration memory budget, layers are planned a chunk at a time, and later chunks see
inputs computed through the already-planned (fake-quantized) earlier layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from qcompiler.calibration import calibration_batches, iter_linear_stats
from qcompiler.distributed import map_qtensors
from qcompiler.errors import PassError, QCompilerError
from qcompiler.formats import packing
from qcompiler.formats.base import QTensor
from qcompiler.formats.scale_search import ErrorMeasure
from qcompiler.pass_registry import register_pass
from qcompiler.passes._scale_modes import ScaleMode, scale_options
from qcompiler.passes._weight_common import DEFAULT_SKIP, select_layers, weight_format
from qcompiler.passes_base import Pass, PassContext, PassResult
from qcompiler.weight_plan import original_weight, record_plan

SAMPLE_ROWS = 2048  # calibration rows per layer for the output-error objective


@register_pass
@dataclass(frozen=True)
class Clip(Pass):
    """Search each weight group's clipping ratio (weight or output error) and plan the result."""

    name = "clip"
    format: str
    group_size: int | None = None
    objective: Literal["weight-mse", "output-mse"] = "output-mse"
    grid: tuple[float, ...] = ()
    skip: tuple[str, ...] = DEFAULT_SKIP
    scale: ScaleMode | None = None  # ZeroQuant-FP's scale constraints (passes/_weight_common.py)

    def __post_init__(self) -> None:
        bad = [r for r in self.grid if not 0.0 < r <= 1.0]
        if bad:
            raise ValueError(f"grid ratios must be in (0, 1], got {bad[0]}; e.g. grid=1.0,0.9,0.8")

    @property
    def keeps_whole_rows(self) -> bool:
        """An explicit grid picks each group from another quantization: no shared row scale."""
        return not self.grid

    def apply(self, program: Any, ctx: PassContext) -> PassResult:
        fmt = weight_format(self.name, self.format)
        scale_options(self.name, fmt, self.scale, self.keeps_whole_rows)
        layers = list(select_layers(self.name, program, fmt, self.group_size, self.skip, ctx))
        if not layers:
            return PassResult(False, {"layers-planned": 0})
        if self.objective == "weight-mse":
            for layer in ctx.progress(layers, total=len(layers), desc=self.name):
                self._plan(program, fmt, layer, None)
        else:
            by_name = {l.name: l for l in layers}
            batches = calibration_batches(program, ctx)
            # row samples a budget-sized chunk of layers at a time (calibration.py)
            # over several processes: a share of the layers per rank (qcompiler/distributed.py)
            for stats in iter_linear_stats(program, batches, list(by_name), absmax=False,
                                           max_samples=SAMPLE_ROWS, ctx=ctx):
                for (name, st), qt in map_qtensors(
                        list(stats.items()), lambda it: by_name[it[0]].n * by_name[it[0]].k,
                        lambda it: self._search(program, fmt, by_name[it[0]], it[1].samples),
                        ctx.progress, self.name):
                    record_plan(program, name, by_name[name].weight, qt, by=self.name)
        return PassResult(True, {"layers-planned": len(layers)})

    def _plan(self, program: Any, fmt: Any, layer: Any, x: torch.Tensor | None) -> None:
        qt = self._search(program, fmt, layer, x)
        record_plan(program, layer.name, layer.weight, qt, by=self.name)

    def _search(self, program: Any, fmt: Any, layer: Any, x: torch.Tensor | None) -> QTensor:
        w = original_weight(program, layer.name, layer.weight).detach().to(torch.float32)
        opts = scale_options(self.name, fmt, self.scale, self.keeps_whole_rows)
        try:
            if self.grid:
                return grid_search(fmt, w, layer.group, self.grid, x, opts)
            return fmt.quantize(w, group_size=layer.group, search="clip", x=x, **opts)
        except QCompilerError as e:
            raise PassError(self.name, f"{layer.name}: {e}") from None


def grid_search(fmt: Any, w: torch.Tensor, group: int, ratios: tuple[float, ...],
                x: torch.Tensor | None, opts: dict[str, Any] | None = None) -> QTensor:
    """Per group, the best of the ratios: clamp the group to r × [min, max], quantize with the
    format's RTN, measure (weight or output error), keep the best group by group."""
    from qcompiler.gptq_core import GROUP_KEYS

    n, k = w.shape
    g = k // group
    wg = w.reshape(n, g, group)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    measure = ErrorMeasure(x, group, fmt.name)
    ones = torch.ones(n, g, 1)
    pin = float(w.abs().max())
    best_err = best = best_codes = None
    for r in ratios:
        clamped = torch.minimum(torch.maximum(wg, r * lo), r * hi).reshape(n, k)
        q = _quantize_pinned(fmt, clamped, group, pin, opts or {})
        err = measure((fmt.dequantize(q) - w).reshape(n, g, group), ones)
        codes = packing.unpack(q.codes, fmt.bits, k).reshape(n, g, group)
        if best is None:
            best_err, best, best_codes = err, q.tensors(), codes
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_codes = torch.where(better[..., None], codes, best_codes)
        parts = q.tensors()
        for key in GROUP_KEYS:
            if key in parts:
                best[key] = torch.where(better, parts[key], best[key])
    best["codes"] = packing.pack(best_codes.reshape(n, k), fmt.bits)
    return QTensor.from_tensors(fmt.name, (n, k), group, best, q.opts)


def _quantize_pinned(fmt: Any, w: torch.Tensor, group: int, pin: float,
                     opts: dict[str, Any]) -> QTensor:
    """RTN quantization whose per-tensor scale (if the format has one) is that of absmax `pin`:
    every ratio must share one global scale (qcompiler.gptq_core.pinned_quantize)."""
    from qcompiler.gptq_core import pinned_quantize

    probe = fmt.quantize(w[:1, :group], group_size=group, search="rtn")
    if probe.global_scale is None:
        return fmt.quantize(w, group_size=group, search="rtn", **opts)
    return pinned_quantize(fmt, w, group, "rtn", pin, opts=opts)
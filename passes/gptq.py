"""`gptq`: GPTQ error compensation in any weight format, planned for lower-datatype.

    gptq{format=razer4}                            group 128, block 128, damp 0.01, act-order,
                                                   output-error group scales
    gptq{format=pot4,group-size=64,act-order=false,search=clip}   the default before 2026-12-03
    gptq{format=int4,search=rtn,act-order=false}   textbook GPTQ (min/max group scales)
    gptq{format=int4-sym,group-size=32,search=half-step}

For each selected linear, the Hessian H = Σ xᵀx of its input over the calibration data
(qcompiler/calibration.py; q/k/v and gate/up share theirs) drives the GPTQ loop of
qcompiler/gptq_core.py, which quantizes with the format's own quantizer group by group, so every
format works. The result becomes a weight plan (qcompiler/weight_plan.py): the fp weight is
replaced by its fake-quantized value and lower-datatype packs exactly the codes GPTQ chose.
Hessians are collected a budget-sized chunk of layers at a time (1 GiB, calibration.py); when a
model needs several chunks, the later chunks' Hessians come from inputs computed through the
already-quantized earlier layers (GPTQ's sequential flavour), the first chunk's from the fp model.
`damp` is the fraction of the mean Hessian diagonal added to it (raised automatically, ×10 at a
time, if H is still not positive definite).

Defaults, and why: act-order (columns by decreasing H diagonal, static groups, as llm-compressor
does by default) and `search=output-mse` (each group's scale minimises the output error that the
group's diagonal block of H predicts, the clip pass's objective, instead of the weight error).
On SmolLM2-135M (WikiText-2, razer4 g64, seed 0) the previous default (neither) gave perplexity
36.4 and KL 0.213, act-order alone 33.1 / 0.132, output-mse alone 33.0 / 0.128, both 32.8 / 0.113
(bench/results/accuracy-smollm2.md has every format at 3 seeds: the gptq and gptq-prev rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from qcompiler.calibration import calibration_batches, iter_linear_stats
from qcompiler.distributed import map_qtensors
from qcompiler.errors import PassError, QCompilerError
from qcompiler.gptq_core import OUTPUT_MSE, gptq_quantize
from qcompiler.pass_registry import register_pass
from qcompiler.passes._scale_modes import ScaleMode, scale_options
from qcompiler.passes._weight_common import DEFAULT_SKIP, select_layers, weight_format
from qcompiler.passes_base import Pass, PassContext, PassResult
from qcompiler.weight_plan import original_weight, record_plan


@register_pass
@dataclass(frozen=True)
class Gptq(Pass):
    """GPTQ: quantize column by column, compensating each error with calibration Hessians."""

    name = "gptq"
    format: str
    group_size: int | None = None
    block_size: int = 128
    damp: float = 0.01
    act_order: bool = True
    # how each group's scale is chosen (qcompiler/gptq_core.py): output-mse (the default for
    # formats with a clip search: the output error the group's block of H predicts), clip
    # (weight error), rtn, or half-step (grid formats: no element off the grid by more than
    # half a step). Unset: output-mse, or the format's own default (int8, fp8: rtn)
    search: Literal["clip", "rtn", "half-step", "output-mse"] | None = None
    skip: tuple[str, ...] = DEFAULT_SKIP
    scale: ScaleMode | None = None  # ZeroQuant-FP's scale constraint (pow2 only: group by group)

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block-size must be >= 1, got {self.block_size}")
        if not 0.0 < self.damp < 1.0:
            raise ValueError(f"damp must be in (0, 1), got {self.damp}; the usual value is 0.01")

    # groups are quantized one at a time (as GPTQ reaches them): no scale shared by a row
    keeps_whole_rows = False

    def apply(self, program: Any, ctx: PassContext) -> PassResult:
        fmt = weight_format(self.name, self.format)
        scale_options(self.name, fmt, self.scale, self.keeps_whole_rows)  # before calibrating
        layers = list(select_layers(self.name, program, fmt, self.group_size, self.skip, ctx))
        if not layers:
            return PassResult(False, {"layers-planned": 0})
        batches = calibration_batches(program, ctx)
        by_name = {l.name: l for l in layers}
        # Hessians a budget-sized chunk at a time (calibration.py): memory stays bounded.
        # Over several processes each rank runs a share of the layers (cost ~ N·K²) and every
        # rank records every plan (qcompiler/distributed.py).
        # Each Hessian is freed as soon as its last linear is planned, and that linear's GPTQ
        # factors it in its own storage (memory: one K×K buffer for the largest input, not two).
        for stats in iter_linear_stats(program, batches, list(by_name), absmax=False,
                                       hessian=True, ctx=ctx):
            hessians = _Hessians(stats)
            del stats
            for name, qt in map_qtensors(
                    list(hessians.names), lambda name: by_name[name].n * by_name[name].k ** 2,
                    lambda name: self._quantize(program, fmt, by_name[name], hessians),
                    ctx.progress, self.name):
                record_plan(program, name, by_name[name].weight, qt, by=self.name)
        return PassResult(True, {"layers-planned": len(layers)})

    def _quantize(self, program: Any, fmt: Any, layer: Any, hessians: _Hessians) -> Any:
        w = original_weight(program, layer.name, layer.weight).detach().to(torch.float32)
        hessian, last = hessians.take(layer.name)
        try:
            return gptq_quantize(fmt, w, hessian, layer.group, block_size=self.block_size,
                                 damp=self.damp, act_order=self.act_order,
                                 search=default_search(fmt, self.search), overwrite_hessian=last,
                                 opts=scale_options(self.name, fmt, self.scale,
                                                    self.keeps_whole_rows))
        except (QCompilerError, ValueError) as e:
            raise PassError(self.name, f"{layer.name}: {e}") from None


def default_search(fmt: Any, search: str | None) -> str | None:
    """The group-scale search GPTQ uses: `search` if given, else output-mse for formats whose
    own default is a clip search (every weight format), else the format's default (rtn)."""
    if search is not None:
        return search
    return OUTPUT_MSE if fmt.default_search == "clip" else None


class _Hessians:
    """The chunk's Hessians by linear, handed out so that each goes with its last reader:
    `take(name)` returns (H, whether no other linear still needs it) and forgets it then (q/k/v
    and gate/up share theirs). Over several processes a rank computes only some linears; a
    Hessian whose other readers another rank plans is never the last here, only copied."""

    def __init__(self, stats: dict[str, Any]) -> None:
        self.names = list(stats)
        self._by_name = {name: st.hessian for name, st in stats.items()}
        self._readers: dict[int, int] = {}
        for h in self._by_name.values():
            self._readers[id(h)] = self._readers.get(id(h), 0) + 1

    def take(self, name: str) -> tuple[torch.Tensor, bool]:
        h = self._by_name.pop(name)
        self._readers[id(h)] -= 1
        return h, self._readers[id(h)] == 0

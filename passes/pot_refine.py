"""`pot-refine`: PoTPTQ's second step, per-group scales refined on calibration data.

    pot-refine{format=pot4}
    clip{format=pot3,objective=weight-mse},pot-refine{format=pot3,steps=200,lr=0.02}

PoTPTQ (arXiv 2507.11959) quantizes in two steps: (1) a robust per-group scale initialisation,
(2) scale refinement on a small calibration set with the codes fixed. Step (1) is the layer's
weight plan when one exists in this format and group size (e.g. from clip), else the format's
own clip search on the weight error. Step (2), here: with the codes c fixed, ŵ = s_g · grid[c]
is linear in the group scales, and we minimise the layer's output error
tr((W − Ŵ) H (W − Ŵ)ᵀ), H = Σ xᵀx / T over the calibration tokens, by Adam on log-scales
(positive scales, scale-free steps) for `steps` steps with learning rate `lr`, as the paper does
by gradient descent. The scales are then rounded to fp16 (their storage type) and a row keeps
the refined scales only if its output error went down, so refinement never hurts. The result
is a weight plan for lower-datatype. Only power-of-two formats (pot2/pot3/pot4) are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qcompiler.calibration import calibration_batches, iter_linear_stats
from qcompiler.distributed import map_qtensors
from qcompiler.errors import PassError
from qcompiler.formats import packing
from qcompiler.formats.base import QTensor
from qcompiler.formats.scale_search import to_fp16_scale
from qcompiler.pass_registry import register_pass
from qcompiler.passes._weight_common import DEFAULT_SKIP, select_layers, weight_format
from qcompiler.passes_base import Pass, PassContext, PassResult
from qcompiler.weight_plan import original_weight, record_plan, valid_plan

POT_FORMATS = ("pot2", "pot3", "pot4")


@register_pass
@dataclass(frozen=True)
class PotRefine(Pass):
    """PoTPTQ step 2: refine power-of-two group scales on calibration data, codes fixed."""

    name = "pot-refine"
    format: str = "pot4"
    group_size: int | None = None
    steps: int = 100
    lr: float = 0.01
    skip: tuple[str, ...] = DEFAULT_SKIP

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def apply(self, program: Any, ctx: PassContext) -> PassResult:
        if self.format not in POT_FORMATS:
            raise PassError(self.name, f"format '{self.format}' is not a power-of-two format; "
                            f"pot-refine refines {'/'.join(POT_FORMATS)} scales (use clip or "
                            "gptq for other formats)")
        fmt = weight_format(self.name, self.format)
        layers = {l.name: l for l in select_layers(self.name, program, fmt, self.group_size,
                                                   self.skip, ctx)}
        if not layers:
            return PassResult(False, {"layers-planned": 0})
        batches = calibration_batches(program, ctx)
        improved = 0
        for stats in iter_linear_stats(program, batches, list(layers), absmax=False,
                                       hessian=True, ctx=ctx):
            # over several processes: a share of the layers per rank (qcompiler/distributed.py)
            for (name, _), (qt, extra) in map_qtensors(
                    list(stats.items()), lambda it: layers[it[0]].n * layers[it[0]].k ** 2,
                    lambda it: self._refine(program, fmt, layers[it[0]], it[1]),
                    ctx.progress, self.name):
                improved += int(extra["rows-improved"])
                record_plan(program, name, layers[name].weight, qt, by=self.name)
        return PassResult(True, {"layers-planned": len(layers), "rows-improved": improved})

    def _refine(self, program: Any, fmt: Any, layer: Any, st: Any) -> tuple[QTensor, dict]:
        """One layer's refined plan and how many of its rows improved."""
        w = original_weight(program, layer.name, layer.weight).detach().to(torch.float32)
        q0 = self._init(program, fmt, layer, w)
        h = st.hessian / max(st.tokens, 1)
        qt, better = refine(fmt, q0, w, h, self.steps, self.lr)
        return qt, {"rows-improved": int(better)}

    def _init(self, program: Any, fmt: Any, layer: Any, w: torch.Tensor) -> QTensor:
        """Step 1: the layer's plan in this format and group size, else the clip search."""
        record = valid_plan(program, layer.name, layer.weight)
        if record is not None and record["format"] == fmt.name \
                and record["group_size"] == layer.group:
            return record["qtensor"]
        return fmt.quantize(w, group_size=layer.group, search="clip")


def row_error(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Per-row output error (w − ŵ) H (w − ŵ)ᵀ, [N]."""
    e = w - w_hat
    return ((e @ h) * e).sum(-1)


def refine(fmt: Any, q: QTensor, w: torch.Tensor, h: torch.Tensor, steps: int,
           lr: float) -> tuple[QTensor, int]:
    """Refined scales for `q` with its codes fixed; returns the QTensor and rows improved."""
    n, k = q.shape
    g = k // q.group_size
    table = fmt.codebook().to(torch.float32)
    grid = table[packing.unpack(q.codes, fmt.bits, k).long()].reshape(n, g, q.group_size)
    s0 = q.scales.to(torch.float32)
    h = h.to(torch.float32)
    init_err = row_error(w, (grid * s0[..., None]).reshape(n, k), h)
    live = s0 > 0  # all-zero groups keep scale 0
    theta = torch.log(torch.where(live, s0, torch.ones_like(s0))).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    scale_norm = init_err.sum().clamp(min=1e-30)
    best_err, best_s = init_err.clone(), s0.clone()
    for _ in range(steps):
        s = torch.where(live, theta.exp(), torch.zeros_like(s0))
        err = row_error(w, (grid * s[..., None]).reshape(n, k), h)
        with torch.no_grad():
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_s = torch.where(better[:, None], s, best_s)
        opt.zero_grad()
        (err.sum() / scale_norm).backward()
        opt.step()
    with torch.no_grad():
        s = torch.where(live, to_fp16_scale(best_s), torch.zeros_like(s0))
        err = row_error(w, (grid * s[..., None]).reshape(n, k), h)
        keep = err < init_err
        s = torch.where(keep[:, None], s, s0)
    parts = q.tensors()
    parts["scales"] = s.to(q.scales.dtype)
    return QTensor.from_tensors(q.format, q.shape, q.group_size, parts, q.opts), int(keep.sum())

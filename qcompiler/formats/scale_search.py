"""Choosing per-group scales by measured error instead of by absmax alone.

`search="rtn"` is the textbook rule: the scale maps the group's extreme onto the grid's extreme
(absmax / max|grid|), nothing is clipped. `search="clip"` tries a grid of clip ratios r <= 1
(scale = r * rtn scale, so the largest values saturate) and keeps, per group, the ratio with the
smallest error. r = 1 is always the first candidate and a candidate replaces the best only when
strictly better, so clip search is never worse than RTN on its own objective and quantizing an
already-quantized tensor finds the same scale again (idempotence).

The objective is the weight MSE of the group by default. With calibration activations x [T, K]
it is the group's share of the output error ||x w^T - x w_hat^T||^2: the block-diagonal part
e_g^T H_gg e_g with H = x^T x / T. Cross-group terms are left out so that every group can pick
its ratio independently (vectorized); AWQ's clip search makes the same approximation.

Ratios: 6 coarse ones from 1.0 down to a floor that depends on the bits, then 4 local steps around
each group's best (10 evaluations, final spacing about 0.02 at 4 bits). The loop runs over these
candidates, never over groups: every step is one tensor op over all groups.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch

from qcompiler.errors import QCompilerError

Search = Literal["rtn", "clip"]
SEARCHES: tuple[str, ...] = ("rtn", "clip")

# Smallest clip ratio tried, by code bits: coarser grids profit from clipping harder.
_MIN_RATIO = {2: 0.35, 3: 0.5, 4: 0.6, 8: 0.8}
COARSE_STEPS = 6
FP16_MAX = 65504.0


def check_search(fmt: str, search: str) -> None:
    if search not in SEARCHES:
        raise QCompilerError(f"format '{fmt}': unknown search '{search}'; use one of "
                             f"{', '.join(SEARCHES)}")


def clip_ratios(bits: int, search: str) -> tuple[float, ...]:
    """The coarse ratios: (1.0,) for RTN, else 6 ratios from 1.0 down to the bits' floor."""
    if search == "rtn":
        return (1.0,)
    lo = _MIN_RATIO.get(bits, 0.6)
    return tuple(1.0 - (1.0 - lo) * i / (COARSE_STEPS - 1) for i in range(COARSE_STEPS))


def refine_steps(bits: int) -> tuple[float, ...]:
    """Local steps tried around each group's best coarse ratio: half, then a quarter of the
    coarse spacing. 6 coarse + 4 local = 10 evaluations, resolution (1 - floor) / 20."""
    spacing = (1.0 - _MIN_RATIO.get(bits, 0.6)) / (COARSE_STEPS - 1)
    return (spacing / 2, spacing / 4)


def with_extra(coarse: tuple[float, ...], extra: tuple[float, ...]) -> tuple[float, ...]:
    """Coarse ratios with `extra` inserted right after 1.0: re-quantizing quantized values meets
    its exact candidate early, so the search stops early (`RunningBest.exact`)."""
    return coarse[:1] + tuple(extra) + coarse[1:]


def search_ratio(evaluate: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor, bits: int,
                 search: str, extra: tuple[float, ...] = ()) -> torch.Tensor:
    """Per-group clip ratio [N, G, 1] minimising `evaluate(ratio [N, G, 1]) -> error [N, G]`.

    Coarse grid first (the same for every group; `extra` ratios, also tried under "rtn", go
    right after 1.0: formats with coarse scale codecs pass ratios > 1, see nvfp4.py), then a
    local search around
    each group's best ratio (per-group ratios, still one tensor op per candidate); local steps
    stay <= 1.
    """
    n, g = like.shape[0], like.shape[1]
    best = RunningBest()
    for r in with_extra(clip_ratios(bits, search), extra):
        ratio = torch.full((n, g, 1), r, dtype=torch.float32, device=like.device)
        best.offer(evaluate(ratio), ratio=ratio)
        # exact() reads the errors on the host; a CUDA graph capture (a KV4 cache quantizing
        # a decode step) cannot synchronize, so it tries every candidate (same result)
        if not stream_capturing() and best.exact():
            return best["ratio"]
    if search == "rtn":
        return best["ratio"]
    for step in refine_steps(bits):
        center = best["ratio"]
        for d in (step, -step):
            ratio = (center + d).clamp(min=0.05, max=1.0)
            best.offer(evaluate(ratio), ratio=ratio)
    return best["ratio"]


def stream_capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph (False on a CPU-only build): host
    reads of tensor values (early exits, input checks) must be skipped then."""
    try:
        return bool(torch.cuda.is_current_stream_capturing())
    except (RuntimeError, AssertionError):  # no CUDA in this torch build, or no driver
        return False


def to_fp16_scale(s: torch.Tensor) -> torch.Tensor:
    """Round scales to the fp16 values they will be stored as (float32 out, saturating)."""
    return s.clamp(max=FP16_MAX).to(torch.float16).to(torch.float32)


def to_fp16_scale_down(s: torch.Tensor) -> torch.Tensor:
    """Round scales DOWN (toward zero) to fp16, float32 out. Integer asymmetric formats need it:
    with s <= (max - min) / qmax the group's extremes always reach codes 0 and qmax, so the
    dequantized group spans exactly qmax * s and re-quantizing it finds s again (idempotence);
    round-to-nearest can push s up by 2^-11 and leave the top code unused."""
    h = s.clamp(max=FP16_MAX).to(torch.float16)
    h = torch.where(h.to(torch.float32) > s, torch.nextafter(h, torch.zeros_like(h)), h)
    return h.to(torch.float32)


def round_significand(s: torch.Tensor, bits: int = 16) -> torch.Tensor:
    """Round float32 values to `bits` significant bits (nearest). An fp32 scale with a short
    significand times a code of <= 8 significant bits is exact in fp32, so dequantized values
    carry no rounding error and re-quantizing them recovers the same scale."""
    m, e = torch.frexp(s.to(torch.float32))
    return torch.ldexp(torch.round(torch.ldexp(m, torch.full_like(e, bits))),
                       (e - bits).to(torch.float32))


def pow2_ceil(s: torch.Tensor) -> torch.Tensor:
    """Smallest power of two >= s (0 stays 0): ZeroQuant-FP's M1 scale constraint."""
    m, ex = torch.frexp(s)
    ex = torch.where(m == 0.5, ex - 1, ex)  # exact powers of two stay
    return torch.where(s > 0, torch.ldexp(torch.ones_like(s), ex.to(s.dtype)), torch.zeros_like(s))


def safe(s: torch.Tensor) -> torch.Tensor:
    """Scale usable as a divisor: zero scales (all-zero groups) become 1."""
    return torch.where(s > 0, s, torch.ones_like(s))


class ErrorMeasure:
    """Per-group error of a candidate: weight MSE, or output MSE with calibration activations."""

    def __init__(self, x: torch.Tensor | None, group_size: int, fmt: str = "",
                 hessian: torch.Tensor | None = None) -> None:
        """x: calibration activations [T, K]; or `hessian`: each group's own second moments
        [K / group_size, group_size, group_size] (the diagonal blocks of xᵀx; GPTQ has them
        already), which give the same per-group output errors without activations (then no
        format refines on the full layer's activations)."""
        self.hessian: torch.Tensor | None = None
        self.activations: torch.Tensor | None = None  # [T, K] float32, for full-layer refinement
        if hessian is not None:
            if x is not None:
                raise ValueError("give calibration activations x or group Hessians, not both")
            if not torch.isfinite(hessian).all():
                raise QCompilerError(f"format '{fmt}': the group Hessians contain NaN/Inf")
            self.hessian = hessian.detach().to(torch.float32)
        elif x is not None:
            xf = x.detach().to(torch.float32).reshape(-1, x.shape[-1])
            if not torch.isfinite(xf).all():
                raise QCompilerError(f"format '{fmt}': calibration activations x contain NaN/Inf")
            self.activations = xf
            t, k = xf.shape
            xg = xf.reshape(t, k // group_size, group_size)
            self.hessian = torch.einsum("tgi,tgj->gij", xg, xg) / max(t, 1)

    @property
    def uses_activations(self) -> bool:
        return self.hessian is not None

    def __call__(self, dy: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Error per group [N, G] of dequantized-minus-original `dy * s` (dy: [N, G, gs])."""
        if self.hessian is None:
            return torch.einsum("ngi,ngi->ng", dy, dy) * s[..., 0].square()
        e = dy * s
        return (torch.einsum("ngi,gij->ngj", e, self.hessian) * e).sum(-1)


class RunningBest:
    """Keeps, per group, the smallest error seen and the candidate tensors that produced it."""

    def __init__(self) -> None:
        self.err: torch.Tensor | None = None
        self.state: dict[str, torch.Tensor] = {}

    def offer(self, err: torch.Tensor, **state: torch.Tensor) -> None:
        """err [N, G]; each state tensor [N, G] or [N, G, 1]. Ties keep the earlier candidate."""
        if self.err is None:
            self.err = err
            self.state = dict(state)
            return
        better = err < self.err
        self.err = torch.minimum(self.err, err)  # = where(better, err, self.err), cheaper
        for name, value in state.items():
            cond = better if value.dim() == better.dim() else better.unsqueeze(-1)
            self.state[name] = torch.where(cond, value, self.state[name])

    def exact(self) -> bool:
        """Every group has zero error: no later candidate can replace anything (strictly better
        only), so a search may stop. Happens when re-quantizing quantized values, e.g. in
        `Format._canonicalize`, where it saves most of the search."""
        return self.err is not None and not bool(self.err.any())

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.state[name]

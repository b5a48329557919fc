"""GPTQ (Frantar et al., 2022) over any weight format, through the format's own quantizer.

The textbook loop quantizes W [N, K] one column at a time and spreads each column's rounding
error over the columns not yet quantized, weighted by the Cholesky factor of H⁻¹ (H = Σ xᵀx,
damped), in blocks of `block_size` columns with a lazy batch update of the rest.

What makes it format-generic: when a group of G columns starts, the format itself quantizes the
group's CURRENT (error-updated) columns and we keep only the group's parameters (scale, zero
point, RaZeR special value, ...). From those parameters we build the group's value table by
dequantizing every code 0..2^bits-1 with them; each column is then rounded to the nearest table
value, and the code is the table index. So every value GPTQ produces is exactly what
`fmt.dequantize` gives for the stored codes and parameters, for int, fp4, RaZeR, PoT, NF4, MX
and NVFP4 alike, and nothing here knows a codebook.

Formats with a per-tensor scale (NVFP4 family): the global scale must be the same for every
group, so each group-start quantization sees the group clamped to the original tensor's absmax
plus one pinning element equal to that absmax (in an extra group whose parameters are thrown
away): the global scale then always equals the one of the original tensor.

act_order=True processes columns by decreasing H diagonal; groups are still contiguous in the
original K order (the storage layout), so their parameters are fixed up front from the original
weight ("static groups", as AutoGPTQ does), not when the group's first column comes up.

`search="half-step"` (grid formats: a fixed code table times one scale): each group's scale is
the smallest one at which every element rounds with an error of at most half a step, i.e. the
grid's extremes stretched by half of their last interval ([-8.5, 7.5] for int4-sym instead of
RTN's [-8, 7]); the format's own RTN quantizer computes it from the group shrunk by the ratio
of the two. A finer grid than RTN, with no element clipped by more than rounding does (llm-
compressor's absmax/7.5 clips the positive extreme by half a step; that one is what makes
theirs worse on RTN). On stories260k int4-sym g32 it cut GPTQ's KL by ~7% (bench/results/
peers.md).

The Hessians are accumulated on the fp model (all layers from the same forward passes), not
layer by layer on the partly quantized model as the paper's sequential variant does; that keeps
calibration one pass over the data.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from qcompiler.formats import packing
from qcompiler.formats.base import TENSOR_KEYS, QTensor

GROUP_KEYS = ("scales", "zeros", "meta")  # per-group parts, [N, K/G]


HALF_STEP = "half-step"


def half_step_factors(fmt: Any) -> tuple[float, float]:
    """(positive, negative) shrink factors that make the format's RTN scale the half-step one:
    gmax / (gmax + (gmax - g2) / 2) for the top of the grid, likewise for the bottom."""
    grid = getattr(fmt, "grid_def", None)
    if grid is None:
        raise ValueError(f"search=half-step needs a grid format (int4-sym, fp4, nf4, pot4, "
                         f"...); {fmt.name} is not one: use search=rtn or clip")
    values = sorted(set(float(v) for v in fmt.codebook().flatten().tolist()))
    hi, hi2, lo, lo2 = values[-1], values[-2], values[0], values[1]
    pos = hi / (hi + (hi - hi2) / 2) if hi > 0 else 1.0
    neg = lo / (lo - (lo2 - lo) / 2) if lo < 0 else 1.0
    return pos, neg


def group_params(fmt: Any, cols: torch.Tensor, group: int, search: str | None,
                 pin: float | None) -> QTensor:
    """The format's own quantization of one group of columns [N, G]; only its parameters are
    used. `pin`: the original tensor's absmax, to hold a per-tensor scale fixed (see above)."""
    if search == HALF_STEP:
        pos, neg = half_step_factors(fmt)
        cols, search = torch.where(cols > 0, cols * pos, cols * neg), "rtn"
    if pin is None:
        return fmt.quantize(cols, group_size=group, search=search)
    n = cols.shape[0]
    extra = torch.zeros(n, group, dtype=cols.dtype)
    extra[0, 0] = pin
    q = fmt.quantize(torch.cat([cols.clamp(-pin, pin), extra], 1), group_size=group,
                     search=search)
    return slice_groups(q, 0, 1)


def slice_groups(q: QTensor, g0: int, g1: int) -> QTensor:
    """The QTensor of groups g0..g1-1 (codes are left empty: only parameters matter)."""
    parts = {k: v[:, g0:g1] for k, v in q.tensors().items() if k in GROUP_KEYS}
    if q.global_scale is not None:
        parts["global_scale"] = q.global_scale
    parts["codes"] = torch.zeros(q.shape[0], 0, dtype=torch.uint8)
    return QTensor.from_tensors(q.format, (q.shape[0], (g1 - g0) * q.group_size), q.group_size,
                                parts, q.opts)


def value_table(fmt: Any, params: QTensor) -> torch.Tensor:
    """[N, 2^bits] values of every code under one group's parameters (row n, code c)."""
    n = params.shape[0]
    count = 1 << fmt.bits
    codes = torch.arange(count, dtype=torch.uint8).expand(n, count)
    parts = {k: v for k, v in params.tensors().items() if k != "codes"}
    parts["codes"] = packing.pack(codes, fmt.bits)
    table_q = QTensor.from_tensors(fmt.name, (n, count), count, parts, params.opts)
    return fmt.dequantize(table_q)


def round_to_table(w: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest table value per row (w [N, C] or [N]); returns (values, codes). Ties: lowest code."""
    squeeze = w.dim() == 1
    w2 = w[:, None] if squeeze else w
    codes = (w2[..., None] - table[:, None, :]).abs().argmin(-1)
    values = table.gather(1, codes)
    if squeeze:
        return values[:, 0], codes[:, 0]
    return values, codes


def assemble(fmt: Any, shape: tuple[int, int], group: int, codes: torch.Tensor,
             params: list[QTensor]) -> QTensor:
    """One QTensor from per-element codes [N, K] and each group's parameters, in K order."""
    parts: dict[str, torch.Tensor] = {"codes": packing.pack(codes.to(torch.uint8), fmt.bits)}
    first = params[0]
    for key in GROUP_KEYS:
        if getattr(first, key) is not None:
            parts[key] = torch.cat([getattr(p, key) for p in params], 1)
    if first.global_scale is not None:
        parts["global_scale"] = first.global_scale
    assert set(parts) <= set(TENSOR_KEYS)
    return QTensor.from_tensors(fmt.name, shape, group, parts, first.opts)


def damped_inverse_factor(h: torch.Tensor, damp: float, *,
                          fresh: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp·mean(diag H)·I)⁻¹, in float64 for stability.

    Memory: one K×K float64 buffer in LAPACK's column-major layout is damped, factored,
    inverted and factored again in place, where H + λI, its factor, the inverse and its factor
    were each a buffer (plus torch's copies into column-major): at K = 8192 (a Llama MLP's down
    projection) one buffer is 512 MiB. Without `fresh`, `h` is left alone and a copy is the
    buffer; with it, `h` must be such a buffer (`float64_hessian`) that the caller gives up,
    and `fresh()` makes a new one, needed only if the damping has to grow. The values are
    those of the out-of-place steps bit for bit (the same LAPACK calls on the same inputs;
    -0.0 entries become +0.0 as H + λ·I made them); the result keeps LAPACK's layout."""
    if fresh is None:
        source = h

        def fresh() -> torch.Tensor:
            return float64_hessian(source, torch.zeros(source.shape[0], dtype=torch.bool))
        h = fresh()
    k = h.shape[0]
    mean = float(torch.diagonal(h).mean())
    info = torch.zeros((), dtype=torch.int32)
    for attempt in range(6):  # raise the damping until H is numerically positive definite
        lam = damp * (10 ** attempt) * max(mean, 1e-12)
        a = h if attempt == 0 else fresh()
        del h
        a.add_(0.0)  # as H + λ·I: off the diagonal h + 0.0
        a.diagonal().add_(lam)
        torch.linalg.cholesky_ex(a, out=(a, info))
        if int(info) == 0:
            torch.cholesky_inverse(a, out=a)
            torch.linalg.cholesky_ex(a, upper=True, out=(a, info))
            if int(info) == 0:
                return a
        h = a  # overwritten: a later attempt starts from fresh()
    raise ValueError("the calibration Hessian is not positive definite even with 1e5x damping")


def float64_hessian(h: torch.Tensor, dead: torch.Tensor,
                    perm: torch.Tensor | None = None) -> torch.Tensor:
    """H in float64 and column-major (the layout LAPACK works in, so `damped_inverse_factor`
    needs no other buffer) with unit diagonal where a column never fired, in `perm` order
    (filled a block of rows at a time: H[perm][:, perm] would hold two more K×K buffers)."""
    k = h.shape[0]
    out = torch.empty_strided((k, k), (1, k), dtype=torch.float64)
    if perm is None:
        out.copy_(h.detach())
    else:
        for r0 in range(0, k, 1024):
            out[r0:r0 + 1024] = h.detach()[perm[r0:r0 + 1024]][:, perm]
    unit = dead if perm is None else dead[perm]
    out[unit, unit] = 1.0
    return out


def gptq_quantize(fmt: Any, w: torch.Tensor, h: torch.Tensor, group: int, *,
                  block_size: int = 128, damp: float = 0.01, act_order: bool = False,
                  search: str | None = None) -> QTensor:
    """GPTQ of w [N, K] with Hessian h [K, K] (Σ xᵀx) into `fmt`, groups of `group` along K."""
    n, k = w.shape
    w = w.detach().to(torch.float64, copy=True)
    dead = torch.diagonal(h) == 0
    hd = float64_hessian(h, dead)  # the caller's h stays as it is
    w[:, dead] = 0.0
    original = w.to(torch.float32)
    if search == HALF_STEP:
        half_step_factors(fmt)  # fails early for a format without a grid
    probe = fmt.quantize(original[:1, :group], group_size=group, search="rtn")
    pin = float(original.abs().max()) if probe.global_scale is not None else None
    ngroups = k // group
    params: list[QTensor | None] = [None] * ngroups
    tables: list[torch.Tensor | None] = [None] * ngroups
    perm = torch.arange(k)
    if act_order:
        perm = torch.argsort(torch.diagonal(hd), descending=True)
        for g in range(ngroups):  # static groups: parameters from the original weight
            params[g] = group_params(fmt, original[:, g * group:(g + 1) * group], group, search,
                                     pin)
            tables[g] = value_table(fmt, params[g]).to(torch.float64)
        del hd
        w, hd = w[:, perm], float64_hessian(h, dead, perm)
    # hd is given up to the factor (overwritten in place); rebuilt only if damping must grow
    u = damped_inverse_factor(hd, damp, fresh=lambda: float64_hessian(
        h, dead, perm if act_order else None))
    del hd
    codes = torch.zeros(n, k, dtype=torch.uint8 if fmt.bits <= 8 else torch.long)
    for b0 in range(0, k, block_size):
        b1 = min(b0 + block_size, k)
        w1 = w[:, b0:b1].clone()
        err = torch.zeros_like(w1)
        u1 = u[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = int(perm[b0 + i])
            g = col // group
            if tables[g] is None:  # the group starts: its current columns choose the parameters
                current = torch.cat([w1[:, i:], w[:, b1:]], 1)[:, :group].to(torch.float32)
                params[g] = group_params(fmt, current, group, search, pin)
                tables[g] = value_table(fmt, params[g]).to(torch.float64)
            q, c = round_to_table(w1[:, i], tables[g])
            codes[:, col] = c
            e = (w1[:, i] - q) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            err[:, i] = e
        w[:, b1:] -= err @ u[b0:b1, b1:]
    return assemble(fmt, (n, k), group, codes, params)  # type: ignore[arg-type]

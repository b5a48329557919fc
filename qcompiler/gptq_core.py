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
weight ("static groups", as AutoGPTQ does), not when the group's first column comes up. A
Hessian the caller gives up is permuted in its own storage (`permute_symmetric_`).

`search="half-step"` (grid formats: a fixed code table times one scale): each group's scale is
the smallest one at which every element rounds with an error of at most half a step, i.e. the
grid's extremes stretched by half of their last interval ([-8.5, 7.5] for int4-sym instead of
RTN's [-8, 7]); the format's own RTN quantizer computes it from the group shrunk by the ratio
of the two. A finer grid than RTN, with no element clipped by more than rounding does (llm-
compressor's absmax/7.5 clips the positive extreme by half a step; that one is what makes
theirs worse on RTN). On stories260k int4-sym g32 it cut GPTQ's KL by ~7% (bench/results/
peers.md).

`search="output-mse"` (the gptq pass's default): each group's parameters minimise the output
error e·H_gg·eᵀ of its own RTN rounding, H_gg being the group's diagonal block of H (the clip
pass's objective, via `Format.quantize(hessian=...)`), instead of the weight error. It matters
where input channels differ in scale, as an LLM's do: GPTQ's output error drops to 0.6-0.8x on
such inputs (tests/calibrated/test_gptq_output_mse.py), by 3-7% on channels of equal scale.

Precision: float32 throughout (the weight being updated, H, its damped inverse's factor), as
the reference GPTQ code (IST-DASLab) and llm-compressor do; float64 would double the K×K factor
(512 MiB at K = 8192), which is most of what a layer-wise compile holds (docs/LAYERWISE.md).

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
OUTPUT_MSE = "output-mse"


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
                 pin: float | None, hessian: torch.Tensor | None = None,
                 opts: dict[str, Any] | None = None) -> QTensor:
    """The format's own quantization of one group of columns [N, G] (or of several groups,
    [N, m·G]); only its parameters are used. `pin`: the original tensor's absmax, to hold a
    per-tensor scale fixed (see above). `hessian`: the groups' blocks of H ([G, G] or
    [m, G, G]), for search=output-mse. `opts`: format options (scale=pow2)."""
    h = None
    if search == HALF_STEP:
        pos, neg = half_step_factors(fmt)
        cols, search = torch.where(cols > 0, cols * pos, cols * neg), "rtn"
    elif search == OUTPUT_MSE:
        assert hessian is not None
        h, search = hessian.reshape(-1, group, group), "clip"
    if pin is None:
        return fmt.quantize(cols, group_size=group, search=search, hessian=h, **(opts or {}))
    return pinned_quantize(fmt, cols, group, search, pin, h, codes=False, opts=opts)


def pinned_quantize(fmt: Any, cols: torch.Tensor, group: int, search: str, pin: float,
                    hessian: torch.Tensor | None = None, codes: bool = True,
                    opts: dict[str, Any] | None = None) -> QTensor:
    """`fmt.quantize` of `cols` [N, K] (clamped to ±pin) with the per-tensor scale that absmax
    `pin` gives: one pinning group holding `pin` is appended, quantized along, and cut off
    again (its error does not count under `hessian`). `codes=False` leaves the codes out
    (callers that use only the parameters)."""
    n, k = cols.shape
    extra = torch.zeros(n, group, dtype=cols.dtype)
    extra[0, 0] = pin
    if hessian is not None:
        hessian = torch.cat([hessian, torch.zeros_like(hessian[:1])])
    q = fmt.quantize(torch.cat([cols.clamp(-pin, pin), extra], 1), group_size=group,
                     search=search, hessian=hessian, **(opts or {}))
    params = slice_groups(q, 0, k // group)
    if not codes:
        return params
    parts = params.tensors()
    parts["codes"] = packing.pack(packing.unpack(q.codes, fmt.bits, k + group)[:, :k], fmt.bits)
    return QTensor.from_tensors(fmt.name, (n, k), group, parts, q.opts)


def diagonal_blocks(h: torch.Tensor, group: int) -> torch.Tensor:
    """H's diagonal blocks [K / group, group, group] (float32 copies): what each group's
    output error depends on, kept before H is factored in place."""
    k = h.shape[0]
    g = k // group
    idx = torch.arange(g)
    return h.detach().reshape(g, group, g, group)[idx, :, idx, :].to(torch.float32).clone()


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
                          overwrite: bool = False) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp·mean(diag H)·I)⁻¹, in float32 as the reference GPTQ
    code (IST-DASLab) and llm-compressor compute it.

    Memory: one K×K float32 buffer in LAPACK's column-major layout is damped, factored,
    inverted and factored again in place (H + λI, its factor, the inverse and its factor were
    each a buffer; at K = 8192, a Llama MLP's down projection, one is 256 MiB). H is symmetric,
    so `h.t()` is a column-major view of the same bytes: with `overwrite=True` that view is the
    buffer (the caller gives `h` up: no copy at all), otherwise a copy of those bytes is (`h`
    is left alone). Either way LAPACK reads the same bytes, so the result does not depend on
    `overwrite`. If H + λI is not numerically positive definite, λ grows tenfold (five times at
    most) from H again: a copy of `h` without `overwrite`; with it, H is spilled to a temporary
    file before the first try and read back only then (disk, not memory). The result keeps
    LAPACK's layout; -0.0 entries of H count as +0.0, as H + λ·I makes them."""
    if overwrite:
        if h.dtype != torch.float32 or not h.is_contiguous():
            raise ValueError("overwrite needs a contiguous float32 Hessian")
        return _factor_in_place(h.t(), damp, _spill(h))
    return _factor_in_place(column_major_hessian(h), damp,
                            lambda: column_major_hessian(h))


def _factor_in_place(a: torch.Tensor, damp: float,
                     fresh: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`damped_inverse_factor` on `a` (column-major H, given up); `fresh()` gives H again."""
    mean = float(torch.diagonal(a).mean())
    info = torch.zeros((), dtype=torch.int32)
    for attempt in range(6):  # raise the damping until H is numerically positive definite
        lam = damp * (10 ** attempt) * max(mean, 1e-12)
        if attempt:
            a = fresh()
        a.add_(0.0)  # as H + λ·I: off the diagonal h + 0.0
        a.diagonal().add_(lam)
        torch.linalg.cholesky_ex(a, out=(a, info))
        if int(info) == 0:
            torch.cholesky_inverse(a, out=a)
            torch.linalg.cholesky_ex(a, upper=True, out=(a, info))
            if int(info) == 0:
                return a
    raise ValueError("the calibration Hessian is not positive definite even with 1e5x damping")


def _spill(h: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A `fresh` for a Hessian factored in its own storage: its bytes go to a temporary file
    now, and come back into that same storage (as the column-major view) if asked."""
    import tempfile

    saved = tempfile.TemporaryFile()
    raw = memoryview(h.detach().numpy()).cast("B")
    saved.write(raw)

    def fresh() -> torch.Tensor:
        saved.seek(0)
        saved.readinto(raw)
        return h.t()
    return fresh


def column_major_hessian(h: torch.Tensor, dead: torch.Tensor | None = None,
                         perm: torch.Tensor | None = None) -> torch.Tensor:
    """H in float32 and column-major (the layout LAPACK works in, so `damped_inverse_factor`
    needs no other buffer), holding the bytes of `h` (its transpose: the same matrix, H is
    symmetric; so the factor does not depend on whether the caller's `h` was copied), with unit
    diagonal where a column never fired (`dead`), in `perm` order (filled a block of rows at a
    time: H[perm][:, perm] would hold two more K×K buffers)."""
    k = h.shape[0]
    out = torch.empty_strided((k, k), (1, k), dtype=torch.float32)
    src = h.detach().t()
    if perm is None:
        out.copy_(src)
    else:
        for r0 in range(0, k, 1024):
            out[r0:r0 + 1024] = src[perm[r0:r0 + 1024]][:, perm]
    if dead is not None:
        unit = dead if perm is None else dead[perm]
        out[unit, unit] = 1.0
    return out


def permute_symmetric_(h: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """h <- h[perm][:, perm], in h's own storage (contiguous K×K): act-order on a Hessian the
    caller gives up needs no second K×K buffer (256 MiB at K = 8192). Rows move along the
    cycles of `perm` (one spare row), then each row is gathered in `perm` order; the values
    are copies, so the result equals the indexed one exactly."""
    k = h.shape[0]
    order = perm.tolist()
    done = [False] * k
    spare = torch.empty(k, dtype=h.dtype)
    for start in range(k):
        if done[start] or order[start] == start:
            done[start] = True
            continue
        spare.copy_(h[start])
        i = start
        while order[i] != start:  # row i takes row perm[i]
            h[i] = h[order[i]]
            done[i] = True
            i = order[i]
        h[i] = spare
        done[i] = True
    for r in range(k):
        torch.index_select(h[r], 0, perm, out=spare)
        h[r] = spare
    return h


def gptq_quantize(fmt: Any, w: torch.Tensor, h: torch.Tensor, group: int, *,
                  block_size: int = 128, damp: float = 0.01, act_order: bool = False,
                  search: str | None = None, overwrite_hessian: bool = False,
                  opts: dict[str, Any] | None = None) -> QTensor:
    """GPTQ of w [N, K] with Hessian h [K, K] (Σ xᵀx) into `fmt`, groups of `group` along K.

    Float32 throughout, as the reference GPTQ code: one float32 copy of w is updated in place.
    `overwrite_hessian=True`: the caller gives `h` up (its last user): the factor is computed
    in h's own storage (`damped_inverse_factor`; with act-order after `permute_symmetric_`);
    the codes are the same either way. `opts`: format options every group is quantized with
    (group-local ones only: scale=pow2, not pow2-row)."""
    n, k = w.shape
    w = w.detach().to(torch.float32, copy=True)
    dead = torch.diagonal(h) == 0
    w[:, dead] = 0.0
    if search == HALF_STEP:
        half_step_factors(fmt)  # fails early for a format without a grid
    blocks = diagonal_blocks(h, group) if search == OUTPUT_MSE else None
    probe = fmt.quantize(w[:1, :group], group_size=group, search="rtn")
    pin = float(w.abs().max()) if probe.global_scale is not None else None
    ngroups = k // group
    params: list[QTensor | None] = [None] * ngroups
    tables: list[torch.Tensor | None] = [None] * ngroups
    perm = torch.arange(k)
    if act_order:
        perm = torch.argsort(torch.diagonal(h).masked_fill(dead, 1.0), descending=True)
        # static groups: parameters from the original weight, all groups in one call (the
        # searches work group by group, so this equals one call per group)
        every = group_params(fmt, w[:, :ngroups * group], group, search, pin, blocks, opts)
        for g in range(ngroups):
            params[g] = slice_groups(every, g, g + 1)
            tables[g] = value_table(fmt, params[g])
        w = w[:, perm]
    if overwrite_hessian and h.dtype == torch.float32 and h.is_contiguous():
        # H (permuted in its own storage for act-order) is the buffer
        if act_order:
            permute_symmetric_(h, perm)
            dead = dead[perm]
        h.diagonal()[dead] = 1.0
        u = damped_inverse_factor(h, damp, overwrite=True)
    else:
        order = perm if act_order else None
        u = _factor_in_place(column_major_hessian(h, dead, order), damp,
                             lambda: column_major_hessian(h, dead, order))
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
                current = torch.cat([w1[:, i:], w[:, b1:]], 1)[:, :group]
                params[g] = group_params(fmt, current, group, search, pin,
                                         None if blocks is None else blocks[g], opts)
                tables[g] = value_table(fmt, params[g])
            q, c = round_to_table(w1[:, i], tables[g])
            codes[:, col] = c
            e = (w1[:, i] - q) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            err[:, i] = e
        w[:, b1:] -= err @ u[b0:b1, b1:]
    return assemble(fmt, (n, k), group, codes, params)  # type: ignore[arg-type]

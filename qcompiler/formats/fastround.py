"""Exact arithmetic nearest rounding onto the magnitude grids of FP4 E2M1, dINT4 and PoT.

Why: rounding is the inner loop of every scale search. The generic rule in grid.py counts the
thresholds below each element and then gathers the value from a table: 7 comparisons, 7 adds
and an int64 gather per element, and on a CPU the gather alone costs more than ten
multiplications. These grids have structure that lets a few float and integer operations on the
element (its exponent bits, a power-of-two step, torch.round's half-to-even) produce the same
value and code, with the same tie rule (ties go to the EVEN code, grid.py):

- E2M1 (0, .5, 1, 1.5, 2, 3, 4, 6): a float with 1 mantissa bit and subnormal step .5, so the
  nearest value is round(a / step) * step with step = 2^(floor(log2 a) - 1), at least .5, taken
  from a's exponent bits. The code's low bit is the mantissa bit, so half-to-even on a / step is
  ties-to-even-code (2.5 -> 2, 5 -> 4, .25 -> 0, .75 -> 1).
- dINT4 (0, .5, 1, 2, 3, 4, 5, 6): below 1 the step is .5 (round(2a) / 2); from 1 on the codes
  of the integers 1..6 are 2..7, so the even code is the ODD integer on a tie:
  round(a - 1) + 1 (a - 1 is exact for a >= 1).
- PoT (1, 1/2, ..., 2^-(n-1), code = exponent index): the nearest power of two in the linear
  domain is a's power of two, or the next one up when the mantissa is above 1.5; on exactly 1.5
  the even code wins. One integer add on the float bits does both (round-half-up on the
  mantissa's top bit, with the carry-in chosen by the exponent's parity).

Every kernel works on magnitudes a >= 0 (finite) and returns float32 values and int32 magnitude
codes; tests/formats/test_fastround.py checks them against the threshold rule on every midpoint,
its float neighbours and random inputs over many decades.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

Kernel = Callable[[torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor | None]]

FP4_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
DINT4_MAGNITUDES = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)

_EXP_MASK = 0x7F800000
_HALF_BITS = 0x3F000000  # 0.5
_ONE_EXP = 1 << 23


def e2m1(a: torch.Tensor, want_codes: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Nearest E2M1 magnitude of a (ties to the even code) and, if asked, its code 0..7."""
    a6 = a.clamp(max=6.0)
    step_bits = (a6.view(torch.int32) & _EXP_MASK).sub_(_ONE_EXP).clamp_(min=_HALF_BITS)
    step = step_bits.view(torch.float32)
    q = a6.div_(step).round_()  # a6 is this function's own copy: divide in place
    codes = None
    if want_codes:
        # q is 0..2 for step .5 below 1, 2..4 above; each doubling of the step adds 2 codes
        codes = (step_bits >> 22).sub_(252).add_(q.to(torch.int32))
    return q.mul_(step), codes


def dint4(a: torch.Tensor, want_codes: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Nearest dINT4 magnitude (0, .5, 1..6) of a, ties to the even code, and its code 0..7."""
    a6 = a.clamp(max=6.0)
    small = (a6 < 1.0).to(torch.float32)
    low = torch.mul(a6, 2.0).round_().mul_(0.5)  # 0, .5 or 1: codes 0, 1, 2
    high = torch.sub(a6, 1.0).round_().add_(1.0)  # 1..6: codes 2..7
    # high + small * (low - high): the difference of two multiples of .5 below 8 is exact, so
    # this picks low or high exactly (a torch.where costs ~10x more on CPU)
    v = low.sub_(high).mul_(small).add_(high)
    codes = None
    if want_codes:
        # 2v below 1, v + 1 from 1 on: v + 1 + small * (v - 1)
        codes = torch.sub(v, 1.0).mul_(small).add_(v).add_(1.0).to(torch.int32)
    return v, codes


def pot(bits: int) -> Kernel:
    """Kernel for the power-of-two magnitudes 2^-e, e = 0 .. 2^(bits-1) - 1 (code e)."""
    smallest = 2.0 ** -((1 << (bits - 1)) - 1)

    def kernel(a: torch.Tensor, want_codes: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        c = a.clamp(smallest, 1.0)
        b = c.view(torch.int32)
        # carry into the exponent when the mantissa is above half, or exactly half and the
        # upper power of two has the even code (exponent field even <=> bit 23 clear)
        carry_in = ((b >> 23) & 1) ^ 1
        r = (b + carry_in).add_(0x3FFFFF).bitwise_and_(_EXP_MASK)
        codes = None
        if want_codes:
            codes = torch.sub(127, r >> 23)
        return r.view(torch.float32), codes

    return kernel


def binned(values: list[float], codes: list[int], thresholds: list[tuple[float, bool]],
           ) -> Kernel:
    """Kernel for any sorted table (NF4): a bin lookup instead of counting every threshold.

    A monotone bin function f(y) = floor(clamp(y * scale + shift, 0, B - 1)) splits the line so
    that each bin holds at most one threshold that can go either way inside it; the index is then
    below[f(y)] + (y > inside[f(y)]). The tables come from f applied to the thresholds
    themselves: a threshold t (as a strict one: y > t) with f(t) < b is passed by every y of bin
    b, one with f(t) > b or f(next float after t) > b by none, and only one with
    f(t) = f(next) = b needs the comparison. Three small gathers (int32 index_select) replace
    len(values) - 1 comparisons and adds.
    """
    strict = torch.tensor([m for m, _ in thresholds], dtype=torch.float32)
    up = torch.tensor([u for _, u in thresholds])
    strict = torch.where(up, torch.nextafter(strict, torch.tensor(float("-inf"))), strict)
    after = torch.nextafter(strict, torch.tensor(float("inf")))
    table = torch.tensor(values, dtype=torch.float32)
    code_table = torch.tensor(codes, dtype=torch.int32)
    lo = float(strict.min()) - 1.0
    width = float(strict.max()) + 1.0 - lo
    gap = float((strict[1:] - strict[:-1]).min()) if len(strict) > 1 else width
    bins = 1 << max(2, math.ceil(math.log2(4 * width / gap)))

    scale, shift = bins / width, -lo * bins / width

    def bin_of(y: torch.Tensor) -> torch.Tensor:
        # monotone in y (each rounding step is), which is all the tables need; the truncating
        # int conversion is a floor once clamped to >= 0
        return torch.mul(y, scale).add_(shift).clamp_(0, bins - 1).to(torch.int32)

    fb, fa = bin_of(strict), bin_of(after)
    below = torch.zeros(bins, dtype=torch.int32)
    inside = torch.full((bins,), float("inf"))
    for i in range(len(strict)):
        below[int(fb[i]) + 1:] += 1
        if int(fa[i]) == int(fb[i]):
            if inside[int(fb[i])] != float("inf"):
                raise ValueError("two undecided thresholds share a bin; use more bins")
            inside[int(fb[i])] = strict[i]

    def kernel(y: torch.Tensor, want_codes: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        b = bin_of(y).reshape(-1)
        idx = torch.index_select(below.to(y.device), 0, b)
        idx += y.reshape(-1) > torch.index_select(inside.to(y.device), 0, b)
        v = torch.index_select(table.to(y.device), 0, idx).reshape(y.shape)
        c = None
        if want_codes:
            c = torch.index_select(code_table.to(y.device), 0, idx).reshape(y.shape)
        return v, c

    return kernel


def kernel_for(magnitudes: tuple[float, ...]) -> Kernel | None:
    """The arithmetic kernel that reproduces nearest rounding onto these magnitudes (listed in
    code order), or None when the grid has no such structure (then grid.py counts thresholds)."""
    if magnitudes == FP4_MAGNITUDES:
        return e2m1
    if magnitudes == DINT4_MAGNITUDES:
        return dint4
    n = len(magnitudes)
    if n >= 2 and n & (n - 1) == 0 and magnitudes == tuple(2.0 ** -e for e in range(n)):
        return pot(n.bit_length())
    return None

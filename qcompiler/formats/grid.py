"""Nearest rounding onto a fixed code table, with one tie rule for every format.

A `Grid` is the code -> value table of a non-uniform format (FP4, NF4, dINT4, PoT) or a uniform
integer one. Rounding is round-to-nearest; an input exactly halfway between two neighbouring
values goes to the one with the EVEN code (the OCP MX rule for FP4; for integers it is
round-half-to-even, torch.round's rule). FORMATS.md lets us pick this or the RaZeR scripts' rule
(midpoint goes to the lower value); we pick ties-to-even because it is symmetric in sign, so
quantizing -w gives exactly -quantize(w), and it is what hardware FP4 casts do.

Implementation: sign-magnitude grids (FP4, dINT4, PoT) round |y| on the positive half only and
put the sign back; their magnitudes are rounded by the exact arithmetic kernels of fastround.py
(exponent bits, power-of-two steps), no table lookup. Other grids (NF4) count the thresholds
below the input, index = sum_i [y > m_i] (tie goes down) or [y >= m_i] (tie goes up), and look
the value up (`torch.bucketize`, a binary search, was ~3x slower on CPU here); this counting rule
is also the reference the fast kernels are tested against (`round_reference`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import torch

from qcompiler.formats import fastround


@dataclass(frozen=True)
class Grid:
    """A code -> value table prepared for nearest rounding.

    `values[c]` is the value of code c. `sign_bit` set means sign-magnitude: code `c | 1 << sign_bit`
    is `-values[c]` (the code with magnitude 0 and the sign set, if any, is never produced).
    `integer` marks a grid whose values are consecutive integers (rounded arithmetically).
    `ambiguity(codes [N, G, gs]) -> [N, G] bool | None`: which groups may have another exact
    encoding (grid_format.py's canonical pass); None for grids that need no such pass.
    """

    values: tuple[float, ...]
    sign_bit: int | None = None
    integer: bool = False
    ambiguity: Callable[[torch.Tensor], torch.Tensor | None] | None = field(default=None,
                                                                            compare=False)

    def __post_init__(self) -> None:
        if self.integer and list(self.values) != [self.values[0] + i for i in range(len(self.values))]:
            raise ValueError("integer grid values must be consecutive integers in code order")
        if self.sign_bit is not None:
            half = 1 << self.sign_bit
            for c in range(half):
                if self.values[c | half] != -self.values[c]:
                    raise ValueError("sign-magnitude grid is not symmetric")

    @property
    def max_value(self) -> float:
        return max(self.values)

    @property
    def min_value(self) -> float:
        return min(self.values)

    def table(self, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.tensor(self.values, dtype=torch.float32, device=device)

    def round_values(self, y: torch.Tensor) -> torch.Tensor:
        """Nearest grid value of each element of y (float32)."""
        return self._round(y, want_codes=False)[0]

    def magnitude_error(self, a: torch.Tensor) -> torch.Tensor:
        """Rounded minus original for magnitudes a = |y| of a sign-magnitude grid.

        Its square equals the signed value's squared error (the grid is symmetric), without the
        sign handling: the scale search's hot loop under a weight-MSE objective.
        """
        return self._round_magnitudes(a).sub_(a)

    def round(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(nearest values float32, their codes uint8)."""
        v, c = self._round(y, want_codes=True)
        assert c is not None
        return v, c

    def codes(self, y: torch.Tensor) -> torch.Tensor:
        """The codes of `round(y)` (uint8), without building the signed values."""
        if self._kernel is None or self.sign_bit is None:
            return self.round(y)[1]
        assert self.sign_bit is not None
        mag, c = self._kernel(y.abs(), True)
        assert c is not None
        c |= ((y < 0) & (mag != 0)).to(torch.int32) << self.sign_bit
        return c.to(torch.uint8)

    def round_reference(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`round` by threshold counting and table lookup only (no arithmetic kernel): the
        definition the fast kernels must reproduce bit for bit."""
        v, c = self._round_counting(y, want_codes=True)
        assert c is not None
        return v, c

    # ---------------------------------------------------------------- internals

    @cached_property
    def _sorted(self) -> tuple[list[float], list[int], list[tuple[float, bool]]]:
        """Distinct values ascending, their codes, and (threshold, tie_goes_up) between them."""
        if self.sign_bit is not None:
            half = 1 << self.sign_bit
            pairs = sorted((self.values[c], c) for c in range(half))
        else:
            best: dict[float, int] = {}
            for c, v in enumerate(self.values):
                if v not in best or (c % 2 == 0 and best[v] % 2 == 1):
                    best[v] = c
            pairs = sorted((v, c) for v, c in best.items())
        vals = [v for v, _ in pairs]
        codes = [c for _, c in pairs]
        thresholds = []
        for i in range(len(vals) - 1):
            mid = float(torch.tensor((vals[i] + vals[i + 1]) / 2, dtype=torch.float32))
            up = codes[i + 1] % 2 == 0 and codes[i] % 2 == 1
            thresholds.append((mid, up))
        return vals, codes, thresholds

    @cached_property
    def _kernel(self) -> fastround.Kernel | None:
        """Sign-magnitude grids: a kernel on magnitudes (structured, else binned); other
        grids: a binned kernel on the signed input; integer grids: None (torch.round)."""
        if self.integer:
            return None
        if self.sign_bit is not None:
            kernel = fastround.kernel_for(self.values[:1 << self.sign_bit])
            if kernel is not None:
                return kernel
        vals, codes, thresholds = self._sorted
        return fastround.binned(vals, codes, thresholds) if thresholds else None

    def _round_magnitudes(self, a: torch.Tensor) -> torch.Tensor:
        if self._kernel is not None:
            return self._kernel(a, False)[0]
        vals, _, thresholds = self._sorted
        idx = torch.zeros(a.shape, dtype=torch.uint8, device=a.device)
        for mid, up in thresholds:
            idx += (a >= mid) if up else (a > mid)
        return torch.tensor(vals, dtype=torch.float32, device=a.device)[idx.long()]

    def _round(self, y: torch.Tensor, want_codes: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.integer:
            return self._round_integer(y, want_codes)
        if self._kernel is None:
            return self._round_counting(y, want_codes)
        if self.sign_bit is None:
            v, c = self._kernel(y, want_codes)
            return v, None if c is None else c.to(torch.uint8)
        v, c = self._kernel(y.abs(), want_codes)
        neg = y < 0
        v = torch.where(neg, -v, v)
        if c is not None:
            c = (c | ((neg & (v != 0)).to(torch.int32) << self.sign_bit)).to(torch.uint8)
        return v, c

    def _round_counting(self, y: torch.Tensor, want_codes: bool,
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.integer:
            return self._round_integer(y, want_codes)
        vals, codes, thresholds = self._sorted
        a = y.abs() if self.sign_bit is not None else y
        idx = torch.zeros(a.shape, dtype=torch.uint8, device=a.device)
        for mid, up in thresholds:
            idx += (a >= mid) if up else (a > mid)
        ii = idx.long()
        v = torch.tensor(vals, dtype=torch.float32, device=y.device)[ii]
        c = None
        if want_codes:
            c = torch.tensor(codes, dtype=torch.uint8, device=y.device)[ii]
        if self.sign_bit is not None:
            neg = y < 0
            v = torch.where(neg, -v, v)
            if c is not None:
                c = c | ((neg & (v != 0)).to(torch.uint8) << self.sign_bit)
        return v, c

    def _round_integer(self, y: torch.Tensor, want_codes: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        lo, hi = self.values[0], self.values[-1]
        v = torch.round(y).clamp_(lo, hi)
        c = (v - lo).to(torch.uint8) if want_codes else None
        return v, c

"""Bit-exact small floating-point codecs: FP8 E4M3, the E3M3 block scale, E2M1, and E8M0.

One generic `MiniFloat` covers every sign/exponent/mantissa layout used here, so the FP8 scale of
NVFP4, the E3M3 scale of NVFP4-RaZeR and the FP4 element all round the same way:
round-to-nearest, ties to even mantissa (IEEE's default, what `torch.float8_e4m3fn` casts do),
saturating at the largest finite value instead of overflowing to NaN (what NVFP4 and MX
quantizers do with scales). Subnormals are kept.

E4M3 is the OCP "fn" variant: bias 7, no infinities, S.1111.111 is NaN, max 448. Tests check it
against `torch.float8_e4m3fn` for all 256 codes.

E3M3 (unsigned, 6 bits) is the NVFP4-RaZeR block scale: bias 3, subnormals down to 2^-5; the
all-ones code is reserved like E4M3's NaN, so the largest value is 2^4 * 1.75 = 28. That is
exactly the authors' clamp range [2^-5, 28] (yc2367/NVFP4-RaZeR, `quant_nvfp4_razer_e3m3`).
Their script emulates it with an E4M3 cast, which is finer than 6 bits below 2^-2; we implement
the 6-bit format itself so the 2 metadata bits really fit in the byte.

E8M0 (MX scales) is a bare exponent: value 2^(code-127), code 255 is NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MiniFloat:
    """A sign(optional)/exponent/mantissa float of at most 8 bits, with subnormals."""

    name: str
    exp_bits: int
    man_bits: int
    bias: int
    signed: bool
    max_value: float
    nan_codes: tuple[int, ...] = ()

    @property
    def bits(self) -> int:
        return int(self.signed) + self.exp_bits + self.man_bits

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (1 - self.bias - self.man_bits)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (any integer dtype) -> float32 values; reserved codes give NaN."""
        c = codes.to(torch.int32)
        m = c & ((1 << self.man_bits) - 1)
        e = (c >> self.man_bits) & ((1 << self.exp_bits) - 1)
        sub = e == 0
        sig = torch.where(sub, m, m + (1 << self.man_bits)).to(torch.float32)
        exp = torch.where(sub, 1, e) - self.bias - self.man_bits
        val = torch.ldexp(sig, exp.to(torch.float32))
        if self.signed:
            neg = ((c >> (self.exp_bits + self.man_bits)) & 1).bool()
            val = torch.where(neg, -val, val)
        for nan in self.nan_codes:
            val = torch.where(c == nan, torch.full_like(val, float("nan")), val)
        return val

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Float values -> uint8 codes: nearest, ties to even, saturating at `max_value`.

        Unsigned formats encode |x| (callers pass non-negative scales). -0.0 encodes as +0.
        """
        q, e = self._round_parts(x)
        carry = q >= (2 << self.man_bits)  # rounding bumped into the next binade
        e = e + carry.to(e.dtype)
        q = torch.where(carry, q / 2, q)
        normal = q >= (1 << self.man_bits)
        exp_field = torch.where(normal, e + self.bias, torch.zeros_like(e)).to(torch.int32)
        man_field = torch.where(normal, q - (1 << self.man_bits), q).to(torch.int32)
        code = (exp_field << self.man_bits) | man_field
        if self.signed:
            neg = (x < 0) & (code != 0)
            code = code | (neg.to(torch.int32) << (self.exp_bits + self.man_bits))
        return code.to(torch.uint8)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Round values onto the format (float32 out), same rule as `encode`.

        Computed as round(a / step) * step, step = 2^(e - man_bits) taken from a's exponent
        bits (at least the subnormal step): exact, and a few times cheaper than frexp/ldexp.
        """
        val = self.quantize_magnitude(x)
        if self.signed:
            val = torch.where(x < 0, -val, val)
        return val

    def quantize_magnitude(self, x: torch.Tensor) -> torch.Tensor:
        """|quantize(x)|: the rounding without putting the sign back (scales are >= 0)."""
        a = x.to(torch.float32).abs().clamp(max=self.max_value)
        low = (1 - self.bias - self.man_bits + 127) << 23  # the subnormal step's float32 bits
        step = (a.view(torch.int32) & 0x7F800000).sub_(self.man_bits << 23).clamp_(min=low)
        step = step.view(torch.float32)
        return torch.div(a, step).round_().mul_(step)

    def table(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Every code's value, index = code (float32; NaN for reserved codes)."""
        return self.decode(torch.arange(1 << self.bits, device=device))

    def _round_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """|x| as integer significand q and unbiased exponent e: value = q * 2^(e - man_bits)."""
        a = x.to(torch.float32).abs().clamp(max=self.max_value)
        _, ex = torch.frexp(a)  # a = f * 2^ex, f in [0.5, 1)
        e = (ex.to(torch.int32) - 1).clamp(min=1 - self.bias)
        q = torch.round(torch.ldexp(a, (self.man_bits - e).to(torch.float32)))
        return q, e


E4M3 = MiniFloat("e4m3", exp_bits=4, man_bits=3, bias=7, signed=True, max_value=448.0,
                 nan_codes=(0x7F, 0xFF))
E3M3 = MiniFloat("e3m3", exp_bits=3, man_bits=3, bias=3, signed=False, max_value=28.0,
                 nan_codes=(0x3F,))
E2M1 = MiniFloat("e2m1", exp_bits=2, man_bits=1, bias=1, signed=True, max_value=6.0)

E8M0_BIAS = 127


def e8m0_decode(codes: torch.Tensor) -> torch.Tensor:
    """E8M0 scale codes -> float32 2^(code-127); code 255 is NaN."""
    c = codes.to(torch.int32)
    val = torch.ldexp(torch.ones_like(c, dtype=torch.float32), (c - E8M0_BIAS).to(torch.float32))
    return torch.where(c == 255, torch.full_like(val, float("nan")), val)


def floor_log2(x: torch.Tensor) -> torch.Tensor:
    """floor(log2(x)) for x > 0, exact (int32), via frexp; x == 0 gives a very small number."""
    _, ex = torch.frexp(x.to(torch.float32))
    return torch.where(x > 0, ex.to(torch.int32) - 1, torch.full_like(ex, -(1 << 20), dtype=torch.int32))

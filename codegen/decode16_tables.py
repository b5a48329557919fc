"""Byte-table decodes of 4-bit codes for the fp16x2 GEMV: one `prmt` looks up 4 codes.

`prmt.b32 d, a, b, sel` with a register selector is an 8-entry byte table: output byte i is byte
`sel.nibble[i] & 7` of the 8 bytes b:a (nibble bit 3 set: that byte's msb, replicated). Every
value of E2M1 (fp4, mxfp4, nvfp4, RaZeR), of pot4 (+-2^-m) and of dint4 is an fp16 number whose
low byte is zero, so a code's whole fp16 value is one byte: its high byte. That gives, per word
w of 8 codes (nibble i = code i, pair k = codes 2k, 2k+1 = the activation pair x_k as loaded):

    sel = w & 0x77777777            magnitude indices (nibble bit 3 cleared: no replicate mode)
    w4 = w << 4; selh = sel >> 16   (the selector reads nibbles 0-3 only)
    per half h (codes 4h .. 4h+3):
      m = prmt(T0, T1, sel_h)       fp16 high bytes of the 4 magnitudes
      g = prmt(w4, w, SIGNS[h])     0xFF for each negative code (replicated sign bits)
      v = (g & 0x80808080) | m      the 4 signed high bytes
      p = prmt(v, 0, 0x1404) -> fp16x2 [0, v0, 0, v1]; p = prmt(v, 0, 0x3424) -> [0, v2, 0, v3]
      two fma.rn.f16x2 with x_2h, x_2h+1

17 instructions per word (2.1 per code). RaZeR's special value is entry 0 of a second table
whose other entries are 0x80 (the sign): `n = prmt(aux, 0x80808080, sel_h)`, `v = (g & n) | m`,
with aux = 0x80808000 | special's high byte built once per group from the metadata (one
`prmt` on a register of the 4 specials' high bytes). Code 8
(sign 1, magnitude 0) then reads the special value; no compare, select or branch per element:
19 instructions per word.

Tables that are not sign-magnitude bytes (nf4: 16 arbitrary values with two-byte fp16 patterns)
use four 8-entry tables per half, high and low bytes of codes 0-7 and 8-15, merged by the sign
mask g (here: code >= 8) and interleaved into lanes by the spreading prmt (25 per word). nf4's
float32 table is not exact in fp16: its fp16x2 decode reads fp16(value) (relative error at most
2^-11 per weight, covered by the dot's bound, see tests/codegen/test_decode16.py).
"""

from __future__ import annotations

import numpy as np

from qcompiler.codegen.decode_plan import DecodeFamily, DecodePlan

SIGNS = (0xD9C8, 0xFBEA)  # prmt selectors: byte i <- replicated sign bit of code 4h + i
SPREAD_HI = (0x1404, 0x3424)  # [0, v0, 0, v1] and [0, v2, 0, v3] from (v, 0)
SPREAD_LO_HI = (0x5140, 0x7362)  # [l0, h0, l1, h1] and [l2, h2, l3, h3] from (l, h)
LUT_MUX = 0xCA  # lop3 (a & b) | (~a & c): a = sign mask, b = codes 8-15, c = codes 0-7
SIGN_BYTES = 0x80808080


def code_values(plan: DecodePlan) -> list[float] | None:
    """The 16 code values in units of the group scale (RaZeR's code 8 as E2M1's -0)."""
    if plan.bits != 4:
        return None
    p = dict(plan.params)
    if plan.family is DecodeFamily.MINIFLOAT:
        if (p["EXP_BITS"], p["MAN_BITS"], p["SIGNED"]) != (2, 1, True):
            return None
        mags = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
        return mags + [-v for v in mags]
    if plan.family is DecodeFamily.POT:
        if p["MAG_BITS"] != 3:
            return None
        mags = [2.0 ** (p["E0"] - m) for m in range(8)]
        return mags + [-v for v in mags]
    if plan.family is DecodeFamily.TABLE:
        if p["SIGN_BIT"] == 3:
            mags = [float(p[f"V{i}"]) for i in range(8)]
            return mags + [-v for v in mags]
        if p["SIGN_BIT"] == -1:
            return [float(p[f"V{i}"]) for i in range(16)]
    return None


def _fp16_bits(v: float) -> int:
    return int(np.array(np.float16(v)).view(np.uint16))


def _words(byte_list: list[int]) -> tuple[int, ...]:
    """Bytes -> little-endian 32-bit words (4 bytes each)."""
    return tuple(sum(b << (8 * i) for i, b in enumerate(byte_list[j:j + 4]))
                 for j in range(0, len(byte_list), 4))


def magnitude_bytes(plan: DecodePlan) -> tuple[int, int] | None:
    """(T0, T1): the fp16 high bytes of the 8 magnitudes, when the values are sign-magnitude
    (code c | 8 = -(code c)), non-negative and exact in fp16 with a zero low byte."""
    vals = code_values(plan)
    if vals is None or plan.family is DecodeFamily.INT:
        return None
    mags = vals[:8]
    if any(vals[c | 8] != -mags[c] or not mags[c] >= 0 for c in range(8)):
        return None
    bits = [_fp16_bits(v) for v in mags]
    if any(float(np.float16(v)) != v or b & 0xFF or b >> 15 for v, b in zip(mags, bits)):
        return None
    return _words([b >> 8 for b in bits])  # type: ignore[return-value]


def special_words(plan: DecodePlan) -> tuple[int, int, int, int] | None:
    """RaZeR per-metadata aux words 0x80808000 | special's fp16 high byte (entry 0 of the
    special table), when every special is exact in fp16 with a zero low byte and magnitude 0
    is byte 0x00; None otherwise (the kernel then uses decode16's set.eq program)."""
    p = dict(plan.params)
    t = magnitude_bytes(plan)
    if (plan.family is not DecodeFamily.MINIFLOAT or p.get("SPECIAL_CODE") != 8 or t is None
            or t[0] & 0xFF):
        return None
    out = []
    for i in range(4):
        v = float(p[f"SPECIAL_{i}"])
        b = _fp16_bits(v)
        if float(np.float16(v)) != v or b & 0xFF:
            return None
        out.append(0x80808000 | (b >> 8))
    return tuple(out)  # type: ignore[return-value]


def special_bytes(plan: DecodePlan) -> int:
    """The 4 specials' fp16 high bytes as one word (byte i = metadata value i)."""
    return sum((w & 0xFF) << (8 * i) for i, w in enumerate(special_words(plan) or ()))


def full_table(plan: DecodePlan) -> tuple[int, ...] | None:
    """Eight words for a 16-entry table (nf4): high bytes of codes 0-7 (2 words), of codes
    8-15, then the low bytes likewise, of each value rounded to fp16 (finite)."""
    vals = code_values(plan)
    if vals is None or plan.family is not DecodeFamily.TABLE:
        return None
    if not all(np.isfinite(np.float16(v)) for v in vals):
        return None
    bits = [_fp16_bits(v) for v in vals]
    hi, lo = [b >> 8 for b in bits], [b & 0xFF for b in bits]
    return _words(hi) + _words(lo)


def rounds_values(plan: DecodePlan) -> bool:
    """Whether the fp16x2 decode reads fp16-rounded values (a table not exact in fp16)."""
    vals = code_values(plan) or []
    return any(float(np.float16(v)) != v for v in vals)

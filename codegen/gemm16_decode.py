"""fp16 decodes of 4-bit codes for the tensor-core GEMM (gemm16.py): bit placement, no fp32.

The fp32 GEMM decodes every code to fp32 (dequant.py) and converts to fp16 before `tl.dot`:
per code a convert, an fp32 multiply and the packing of two fp16 halves. Here each code goes
straight to an fp16 bit pattern by integer ops on the code, fp16 arithmetic makes it the exact
code value, and one fp16 multiply applies the group scale. Elementwise fp16 (and 16-bit integer)
ops on adjacent elements of a thread pair up into HMUL2 / HADD2 / VIADD.16x2 in the sm_90 SASS,
so most of the work is done two codes per instruction without inline assembly.

Exactness (tests/codegen/test_gemm16.py checks every code against the formats' `dequantize`):
the code value is exact in fp16 and the group scale is an exact fp16 number, so the one
rounding `value * scale` equals fp16(reference), which is what the fp32 path's convert gives
too (its fp32 product is exact). Per family:
- int (int4, int4-sym): fp16 bits 0x6400 | q are 1024 + q; subtracting 1024 + zero (+ offset),
  a per-group fp16 constant, leaves q - z exactly;
- E2M1 (fp4, razer4, mxfp4, nvfp4, nvfp4-razer): `(c & 7) << 9 | (c & 8) << 12` is the value
  times 2^-14 (normals and the subnormal 0.5 alike); times 2^14 (exact) gives the value;
  RaZeR's code 8 is one select against the group's special value * scale (rounded once);
- pot (pot4): exponent field 15 + E0 - m (an XOR when 15 + E0 is 7 mod 8), sign ORed in;
- dint4 (0, 0.5, 1 .. 6, sign-magnitude): magnitude = max(m - 1, 0.5 * (m & 1)), with
  m - 1 = (1024 + m) - 1025 and 0.5 * (m & 1) a bit pattern; sign ORed in;
- 16-entry tables (nf4): a select tree over the 16 values rounded to fp16, the asm's byte
  tables (gemm16_asm.table16). nf4's float32 values are not exact in fp16, so its weight is
  fp16(fp16(v) * scale): two roundings, within 2 * 2^-11 + 2^-22 relative of the reference
  (plus 2^-25 absolute where the product is subnormal), one 2^-11 more than the exact
  formats, as at M = 1 (decode16_tables.py).
Scales: fp16 scales as they are (times the E2M1 placement's 2^14 in a second multiply: their
product could overflow fp16); E8M0 (mxfp4) 2^e as an fp16 power of two, exact for e in
[-24, 15] (outside, the weights leave fp16's range anyway); E4M3 (nvfp4) by the same bit
placement, times 2^(14 - u) (u = 8, E4M3's exponent bias offset, so 448 * 2^6 still fits):
one multiply signs, places and scales, and 2^u and the per-tensor fp32 scale multiply the fp32
accumulator after the loop, so they never round a weight (v * s * 2^-8 keeps all 5
significant bits in fp16: it is at least 2^-18).
"""

from __future__ import annotations

import inspect

import triton
import triton.language as tl

from qcompiler.codegen import gemm16_asm
from qcompiler.codegen.decode_plan import DecodeFamily, DecodePlan, ScaleKind


@triton.jit
def h16_int(c, s, aux):
    """(1024 + c) - (1024 + z + offset), exact, times the fp16 scale (one rounding)."""
    return ((c | 0x6400).to(tl.float16, bitcast=True) - aux) * s


@triton.jit
def h16_e2m1(c, f1, s, aux, SPECIAL: tl.constexpr):
    """E2M1 code -> fp16 value * 2^-14 by bit placement, times f1 (2^14 folded), times s;
    RaZeR: code 8 (-0) is the group's special value * scale."""
    bits = ((c & 7) << 9) | ((c & 8) << 12)
    w = bits.to(tl.float16, bitcast=True) * f1 * s
    if SPECIAL:
        w = tl.where(c == 8, aux, w)
    return w


@triton.jit
def h16_pot(c, s, BASE: tl.constexpr):
    """+-2^(E0 - m) as fp16 bits: exponent field BASE - m (BASE = 15 + E0), sign at bit 15."""
    if BASE % 8 == 7:  # BASE - m for m <= 7 borrows nothing: an XOR
        bits = ((((c & 7) << 10) | ((c & 8) << 12)) ^ (BASE << 10)).to(tl.int16)
    else:
        bits = ((BASE << 10) - ((c & 7) << 10)) | ((c & 8) << 12)
    return bits.to(tl.float16, bitcast=True) * s


@triton.jit
def h16_dint(c, s):
    """dint4: |v| = max(m - 1, 0.5 * (m & 1)) for m = c & 7 (0, .5, 1, 2, .., 6), sign bit 3."""
    m1 = ((c & 7) | 0x6400).to(tl.float16, bitcast=True) - tl.cast(1025.0, tl.float16)
    half = ((c & 1) * 0x3800).to(tl.float16, bitcast=True)
    mag = tl.maximum(m1, half)
    bits = mag.to(tl.int16, bitcast=True) | ((c & 8) << 12)
    return bits.to(tl.float16, bitcast=True) * s


@triton.jit
def h16_table16(c, s, V0: tl.constexpr, V1: tl.constexpr, V2: tl.constexpr, V3: tl.constexpr,
                V4: tl.constexpr, V5: tl.constexpr, V6: tl.constexpr, V7: tl.constexpr,
                V8: tl.constexpr, V9: tl.constexpr, V10: tl.constexpr, V11: tl.constexpr,
                V12: tl.constexpr, V13: tl.constexpr, V14: tl.constexpr, V15: tl.constexpr):
    """16-entry table (nf4): V0..V15 are the values rounded to fp16 (exact in the fp32 the
    select tree builds, so the cast back is exact), times the fp16 scale (one rounding)."""
    b0 = (c & 1) != 0
    b1 = (c & 2) != 0
    b2 = (c & 4) != 0
    b3 = (c & 8) != 0
    q0 = tl.where(b1, tl.where(b0, V3, V2), tl.where(b0, V1, V0))
    q1 = tl.where(b1, tl.where(b0, V7, V6), tl.where(b0, V5, V4))
    q2 = tl.where(b1, tl.where(b0, V11, V10), tl.where(b0, V9, V8))
    q3 = tl.where(b1, tl.where(b0, V15, V14), tl.where(b0, V13, V12))
    v = tl.where(b3, tl.where(b2, q3, q2), tl.where(b2, q1, q0))
    return v.to(tl.float16) * s


@triton.jit
def h16_minifloat_scale(raw, EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr,
                        UNBIAS: tl.constexpr):
    """E4M3 / E3M3 scale codes -> fp16 by bit placement (value * 2^(bias - 15)), times UNBIAS
    (the GEMM passes 2^14: value * 2^(14 - u) for 2^u = 2^(15 - bias), E4M3's 448 * 2^6 fits)."""
    bits = ((raw & ((1 << (EXP_BITS + MAN_BITS)) - 1)) << (10 - MAN_BITS)).to(tl.int16)
    return bits.to(tl.float16, bitcast=True) * tl.cast(UNBIAS, tl.float16)


@triton.jit
def g16_expand(v, R: tl.constexpr):
    """[rows, groups] -> [rows, groups * R] (R = 1 .. 16, a power of two): each value repeated
    for the R words of its group, by joins (in registers when a thread holds the group's
    words), so group data is loaded and decoded once per group, not once per word."""
    if R >= 2:
        v = tl.join(v, v).reshape(v.shape[0], v.shape[1] * 2)
    if R >= 4:
        v = tl.join(v, v).reshape(v.shape[0], v.shape[1] * 2)
    if R >= 8:
        v = tl.join(v, v).reshape(v.shape[0], v.shape[1] * 2)
    if R >= 16:
        v = tl.join(v, v).reshape(v.shape[0], v.shape[1] * 2)
    return v


_FAMILY = {DecodeFamily.INT: (h16_int,), DecodeFamily.MINIFLOAT: (h16_e2m1,),
           DecodeFamily.POT: (h16_pot,), DecodeFamily.TABLE: (h16_dint,)}
_SCALE = {ScaleKind.FLOAT: (), ScaleKind.MINIFLOAT: (h16_minifloat_scale,), ScaleKind.E8M0: ()}


def helper_source(plan: DecodePlan) -> str:
    """The fp16 decode helpers `plan` needs, their source copied verbatim from this module."""
    family = (h16_table16,) if gemm16_asm.table16(plan) is not None else _FAMILY[plan.family]
    fns = _SCALE[plan.scale] + family + (g16_expand,)
    return "\n\n".join(inspect.getsource(fn.fn).rstrip() + "\n" for fn in fns)

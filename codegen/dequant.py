"""Per-format-family `@triton.jit` dequant helpers, and their source for the emitted files.

These functions are the one source of truth: the package imports them as ordinary jit helpers
(tests call them directly) and `helper_source` copies their text verbatim (inspect.getsource)
into every emitted kernel file, so an emitted file is self-contained and still byte-for-byte the
code tested here. Keep them free of module-level names other than `triton` and `tl`.

Every family is split in two so per-group work is done once per tile, not once per element:
- `<family>_group(...)` turns the group's raw side data (decoded scale, zero point, metadata)
  into the two operands the element decode needs, on a [rows, 1] (or [rows, groups]) tensor;
- `<family>_codes(codes, s, aux, ...)` decodes codes to fp32 weights, elementwise.
They return fp32: the GEMV accumulates in fp32 directly and the GEMM casts to the activation
dtype (fp16/bf16) right before `tl.dot`. Bit manipulation replaces table lookups wherever the
format allows it; the format-specific constants arrive as tl.constexpr (decode_plan.py derives
them from the format registry).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import triton
import triton.language as tl

from qcompiler.codegen.decode_plan import DecodeFamily, DecodePlan, ScaleKind

# ----------------------------------------------------------------------------- bit tricks


@triton.jit
def minifloat_to_fp16(c, EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr, SIGNED: tl.constexpr):
    """Minifloat codes (E2M1, E4M3, E3M3) -> fp16 equal to value * 2^(bias - 15).

    The exponent and mantissa bits land in the low bits of fp16's exponent field and the top of
    its mantissa, the sign at bit 15: `(c & 7) << 9 | (c & 8) << 12` for E2M1. Reinterpreting
    gives normals and subnormals exactly; the caller folds 2^(15 - bias) into the group scale.
    """
    bits = (c & ((1 << (EXP_BITS + MAN_BITS)) - 1)) << (10 - MAN_BITS)
    if SIGNED:
        bits = bits | (((c >> (EXP_BITS + MAN_BITS)) & 1) << 15)
    return bits.to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def scale_e8m0(raw):
    """E8M0 scale 2^(raw - 127): the code is the fp32 exponent field, so shift it into place."""
    return (raw.to(tl.int32) << 23).to(tl.float32, bitcast=True)


@triton.jit
def scale_minifloat(raw, EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr, SIGNED: tl.constexpr,
                    UNBIAS: tl.constexpr):
    """E4M3 / E3M3 scale codes -> fp32 by the same fp16 bit placement as the elements."""
    return minifloat_to_fp16(raw.to(tl.int32), EXP_BITS, MAN_BITS, SIGNED).to(tl.float32) * UNBIAS


# ----------------------------------------------------------------------------- minifloat family


@triton.jit
def minifloat_group(scale, meta, UNBIAS: tl.constexpr, SPECIAL_CODE: tl.constexpr,
                    SPECIAL_0: tl.constexpr, SPECIAL_1: tl.constexpr, SPECIAL_2: tl.constexpr,
                    SPECIAL_3: tl.constexpr):
    """(scale * 2^(15 - bias), the group's special value * scale or 0).

    RaZeR's 2-bit metadata picks one of four special values: two selects per group, not per
    element.
    """
    if SPECIAL_CODE >= 0:
        hi = (meta & 2) != 0
        lo = (meta & 1) != 0
        special = tl.where(hi, tl.where(lo, SPECIAL_3, SPECIAL_2),
                           tl.where(lo, SPECIAL_1, SPECIAL_0))
        aux = special * scale
    else:
        aux = tl.zeros_like(scale)
    return scale * UNBIAS, aux


@triton.jit
def minifloat_codes(c, s, aux, EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr,
                    SIGNED: tl.constexpr, SPECIAL_CODE: tl.constexpr):
    """FP codes -> fp32: fp16 bit placement, one multiply, and (RaZeR) one select for the
    special code against the group's special value."""
    w = minifloat_to_fp16(c, EXP_BITS, MAN_BITS, SIGNED).to(tl.float32) * s
    if SPECIAL_CODE >= 0:
        w = tl.where(c == SPECIAL_CODE, aux, w)
    return w


# ----------------------------------------------------------------------------- integer family


@triton.jit
def int_group(scale, zero, OFFSET: tl.constexpr, HAS_ZERO: tl.constexpr):
    """(scale, zero point + code offset): both subtrahends merged once per group."""
    if HAS_ZERO:
        z = zero.to(tl.int32) + OFFSET
    else:
        z = tl.zeros_like(scale).to(tl.int32) + OFFSET
    return scale, z


@triton.jit
def int_codes(c, s, aux, XOR: tl.constexpr):
    """(q - z) * s. XOR flips the sign bit of two's-complement codes into offset binary."""
    if XOR != 0:
        c = c ^ XOR
    return (c - aux).to(tl.float32) * s


# ----------------------------------------------------------------------------- power-of-two family


@triton.jit
def pot_group(scale, E0: tl.constexpr):
    """(fp32 bits of |scale| * 2^E0, the scale's sign bit): what the element decode works on.

    The exponent arithmetic runs on fp32 bits, not fp16: an fp16 scale near 2^-14 times 2^-7
    would leave fp16's 5-bit exponent range. A zero scale (all-zero group, stored as +0 or -0)
    stays bit pattern 0; the scale's sign is kept apart so it never borrows into the exponent.
    """
    bits = scale.to(tl.float32).to(tl.int32, bitcast=True)
    sign = (bits >> 31) << 31  # arithmetic shift: 0x80000000 or 0, no 64-bit literal
    mag = bits ^ sign
    return tl.where(mag == 0, 0, mag + (E0 << 23)), sign


@triton.jit
def pot_codes(c, s, aux, MAG_BITS: tl.constexpr):
    """+-scale * 2^(E0 - m) without a multiply: subtract m from the exponent field, then put
    the sign (code sign XOR scale sign) into bit 31. No code is reserved for zero; the max()
    keeps a zero scale at zero (0 - (m << 23) would wrap)."""
    m = c & ((1 << MAG_BITS) - 1)
    bits = tl.maximum(s - (m << 23), 0) | (((c >> MAG_BITS) & 1) << 31)
    return (bits ^ aux).to(tl.float32, bitcast=True)


# ----------------------------------------------------------------------------- table family


@triton.jit
def table_group(scale):
    """Table formats only need the scale."""
    return scale, tl.zeros_like(scale)


@triton.jit
def table_codes(c, s, aux, SIGN_BIT: tl.constexpr,
                V0: tl.constexpr, V1: tl.constexpr, V2: tl.constexpr, V3: tl.constexpr,
                V4: tl.constexpr, V5: tl.constexpr, V6: tl.constexpr, V7: tl.constexpr,
                V8: tl.constexpr, V9: tl.constexpr, V10: tl.constexpr, V11: tl.constexpr,
                V12: tl.constexpr, V13: tl.constexpr, V14: tl.constexpr, V15: tl.constexpr):
    """Codes -> table value * scale by a 15-select tree on the code bits (no memory lookup).

    Sign-magnitude tables (SIGN_BIT >= 0, e.g. dint4) index the magnitude half and OR the sign
    into bit 31. Tables shorter than 16 are padded by repeating their last value, so the unused
    top levels select between equal constants and fold away.
    """
    if SIGN_BIT >= 0:
        idx = c & ((1 << SIGN_BIT) - 1)
    else:
        idx = c
    b0 = (idx & 1) != 0
    b1 = (idx & 2) != 0
    b2 = (idx & 4) != 0
    b3 = (idx & 8) != 0
    q0 = tl.where(b1, tl.where(b0, V3, V2), tl.where(b0, V1, V0))
    q1 = tl.where(b1, tl.where(b0, V7, V6), tl.where(b0, V5, V4))
    q2 = tl.where(b1, tl.where(b0, V11, V10), tl.where(b0, V9, V8))
    q3 = tl.where(b1, tl.where(b0, V15, V14), tl.where(b0, V13, V12))
    v = tl.where(b3, tl.where(b2, q3, q2), tl.where(b2, q1, q0)) * s
    if SIGN_BIT >= 0:
        sign = ((c >> SIGN_BIT) & 1) << 31
        v = (v.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)
    return v


# ----------------------------------------------------------------------------- source emission

_FAMILY_HELPERS: dict[DecodeFamily, tuple[Callable, ...]] = {
    DecodeFamily.MINIFLOAT: (minifloat_to_fp16, minifloat_group, minifloat_codes),
    DecodeFamily.INT: (int_group, int_codes),
    DecodeFamily.POT: (pot_group, pot_codes),
    DecodeFamily.TABLE: (table_group, table_codes),
}
_SCALE_HELPERS: dict[ScaleKind, tuple[Callable, ...]] = {
    ScaleKind.FLOAT: (),
    ScaleKind.E8M0: (scale_e8m0,),
    ScaleKind.MINIFLOAT: (minifloat_to_fp16, scale_minifloat),
}
# Which family constexprs go to the `_group` helper (the rest go to `_codes`)
_GROUP_PARAMS: dict[DecodeFamily, tuple[str, ...]] = {
    DecodeFamily.MINIFLOAT: ("UNBIAS", "SPECIAL_CODE", "SPECIAL_0", "SPECIAL_1", "SPECIAL_2",
                             "SPECIAL_3"),
    DecodeFamily.INT: ("OFFSET", "HAS_ZERO"),
    DecodeFamily.POT: ("E0",),
    DecodeFamily.TABLE: (),
}
_CODES_PARAMS: dict[DecodeFamily, tuple[str, ...]] = {
    DecodeFamily.MINIFLOAT: ("EXP_BITS", "MAN_BITS", "SIGNED", "SPECIAL_CODE"),
    DecodeFamily.INT: ("XOR",),
    DecodeFamily.POT: ("MAG_BITS",),
    DecodeFamily.TABLE: ("SIGN_BIT",) + tuple(f"V{i}" for i in range(16)),
}


def helper_functions(plan: DecodePlan) -> list[Callable]:
    """The jit helpers an emitted file needs for `plan`, each once, in a fixed order."""
    out: list[Callable] = []
    for fn in _SCALE_HELPERS[plan.scale] + _FAMILY_HELPERS[plan.family]:
        if fn not in out:
            out.append(fn)
    return out


def helper_source(plan: DecodePlan) -> str:
    """The helpers' source text, copied verbatim from this module."""
    return "\n\n".join(_source_of(fn) for fn in helper_functions(plan))


def group_fn_name(plan: DecodePlan) -> str:
    return f"group_params_{plan.ident}"


def dequant_fn_name(plan: DecodePlan) -> str:
    return f"dequant_{plan.ident}"


def binding_source(plan: DecodePlan) -> str:
    """Two small jit functions binding the family helpers to this format's constants.

    `group_params_<fmt>(scale_raw, zero_raw, meta_raw, gscale) -> (s, aux)` runs once per tile
    on the group data; `dequant_<fmt>(codes, s, aux) -> fp32 weights` is the call the kernels
    make between loading the packed codes and accumulating.
    """
    params = dict(plan.params)
    family = plan.family.value
    scale_expr = _scale_expr(plan)
    group_args = ["scale"]
    if plan.family is DecodeFamily.MINIFLOAT:
        group_args.append("meta_raw.to(tl.int32)" if plan.has_meta else "0")
    elif plan.family is DecodeFamily.INT:
        group_args.append("zero_raw" if plan.has_zero else "0")
    group_args += [f"{k}={_lit(params[k])}" for k in _GROUP_PARAMS[plan.family]]
    codes_args = ["codes", "s", "aux"] + [f"{k}={_lit(params[k])}"
                                          for k in _CODES_PARAMS[plan.family]]
    group_call = f"    return {family}_group("
    codes_call = f"    return {family}_codes("
    lines = [
        "@triton.jit",
        f"def {group_fn_name(plan)}(scale_raw, zero_raw, meta_raw, gscale):",
        f'    """{plan.format}: per-group operands (decoded scale, {_aux_doc(plan)})."""',
        f"    scale = {scale_expr}",
        group_call + _join_args(group_args, len(group_call)) + ")",
        "",
        "",
        "@triton.jit",
        f"def {dequant_fn_name(plan)}(codes, s, aux):",
        f'    """{plan.format} codes -> fp32 weights ({plan.family.value} decode)."""',
        codes_call + _join_args(codes_args, len(codes_call)) + ")",
    ]
    return "\n".join(lines)


def scale_source(plan: DecodePlan) -> str:
    """Expression of the decoded fp32 group scale (times the global scale) on `scale_raw`."""
    return _scale_expr(plan)


def _scale_expr(plan: DecodePlan) -> str:
    if plan.scale is ScaleKind.FLOAT:
        expr = "scale_raw.to(tl.float32)"
    elif plan.scale is ScaleKind.E8M0:
        expr = "scale_e8m0(scale_raw)"
    else:
        kw = ", ".join(f"{k}={_lit(v)}" for k, v in plan.scale_params)
        expr = f"scale_minifloat(scale_raw, {kw})"
    return f"{expr} * gscale" if plan.has_global_scale else expr


def _aux_doc(plan: DecodePlan) -> str:
    return {
        DecodeFamily.MINIFLOAT: "special value * scale" if plan.has_meta else "unused",
        DecodeFamily.INT: "zero point + code offset",
        DecodeFamily.POT: "scale sign bit; s is |scale|'s fp32 bit pattern",
        DecodeFamily.TABLE: "unused",
    }[plan.family]


def _join_args(args: list[str], indent: int) -> str:
    """Comma-join, wrapping at 100 columns with a hanging indent (deterministic)."""
    out, line = [], ""
    for a in args:
        piece = a if not line else f", {a}"
        if line and indent + len(line) + len(piece) > 96:
            out.append(line + ",")
            line = a
        else:
            line += piece
    out.append(line)
    return ("\n" + " " * indent).join(out)


def _lit(v: object) -> str:
    """A constexpr literal: repr of bool/int/float (float repr round-trips exactly)."""
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, float):
        return repr(v)
    return str(int(v))  # type: ignore[call-overload]


def _source_of(fn: Callable) -> str:
    inner = getattr(fn, "fn", fn)
    return inspect.getsource(inner).rstrip() + "\n"

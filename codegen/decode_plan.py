"""How a kernel decodes one format: derived from the format registry, never re-hard-coded.

The kernels need a handful of facts about a format: code bits and packing, how the group scale
is stored, which side tensors exist (zero points, special-value metadata, a per-tensor scale) and
how a code becomes a number. All of them come from `qcompiler.formats`:

- bits, scale type and zero points from the `Format` attributes, the packing unit from
  `qcompiler.formats.packing`, the minifloat layouts (E2M1, E4M3, E3M3) from `formats.fp8`;
- the side tensors from one tiny probe quantization (the `QTensor` says what a format stores);
- the code -> value rule by classifying `codebook()`. A table that *is* a minifloat (E2M1,
  E4M3), a run of integers, or +-2^-e gets the matching bit-manipulation decode; anything else
  (nf4, dint4) gets a constant select tree. RaZeR's `[specials, 16]` codebook names its special
  code (the one column that differs between rows) and its special values (that column).

So a new format whose codebook is, say, E2M1 needs no codegen change, and a codebook that
matches none of the bit tricks still works through the select tree.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch

from qcompiler.errors import QCompilerError

# Scale types stored as plain floats (fp16 / fp32; "pow2" scales are fp16 powers of two)
_FLOAT_SCALE_TYPES = ("fp16", "fp32", "pow2")
# Minifloat element codecs a codebook may match, by code bits (names of `qcompiler.formats.fp8`)
_ELEMENT_CODECS = {4: ("E2M1",), 8: ("E4M3",)}
# Minifloat scale codecs by scale type
_SCALE_CODECS = {"e4m3": "E4M3", "e3m3": "E3M3"}
MAX_TABLE_ENTRIES = 16  # the select tree covers codes of up to 4 bits
MAX_SPECIALS = 4  # RaZeR metadata is 2 bits


class DecodeFamily(StrEnum):
    """Which dequant helper family a format's codes go through (see dequant.py)."""

    MINIFLOAT = "minifloat"  # sign/exponent/mantissa codes placed into fp16 bits (E2M1, E4M3)
    INT = "int"  # uniform integers: (q - zero) * scale
    POT = "pot"  # +-2^(E0 - m): exponent subtraction in the scale's fp32 exponent field
    TABLE = "table"  # any other table: a constant select tree over the code bits


class ScaleKind(StrEnum):
    """How the per-group scale is stored."""

    FLOAT = "float"  # fp16 or fp32 values
    E8M0 = "e8m0"  # uint8 exponent, value 2^(s - 127)
    MINIFLOAT = "minifloat"  # uint8 E4M3 / E3M3 bit patterns


@dataclass(frozen=True)
class DecodePlan:
    """Everything format-specific a kernel is specialized on (all of it becomes tl.constexpr).

    `params` are the family helper's constexpr arguments and `scale_params` those of the scale
    decoder, as (name, value) pairs in a fixed order so the emitted source is deterministic.
    """

    format: str
    description: str
    bits: int
    elems_per_unit: int  # codes per packing unit (2 for 4-bit, 4 for 2-bit, 8 for 3-bit)
    unit_bytes: int  # bytes per packing unit (3 for 3-bit, else 1)
    family: DecodeFamily
    params: tuple[tuple[str, Any], ...]
    scale: ScaleKind
    scale_params: tuple[tuple[str, Any], ...]
    has_zero: bool
    has_meta: bool
    has_global_scale: bool
    # the QTensor parts the format stores and their torch dtype names, e.g. ("scales", "float16")
    part_dtypes: tuple[tuple[str, str], ...] = ()

    @property
    def ident(self) -> str:
        """The format name as a Python identifier fragment (`int4-sym` -> `int4_sym`)."""
        return self.format.replace("-", "_").replace(".", "_")

    def fingerprint(self) -> str:
        """Stable text of the decode-relevant facts (specializations differ iff this differs)."""
        body = {k: v for k, v in self.__dict__.items() if k not in ("description",)}
        return json.dumps(body, sort_keys=True, default=str)


def normalize_opts(opts: dict[str, Any] | str | None) -> dict[str, Any]:
    """Format options as a dict; the custom ops carry them as compact JSON text."""
    if opts is None or opts == "":
        return {}
    if isinstance(opts, str):
        try:
            parsed = json.loads(opts)
        except json.JSONDecodeError as e:
            raise QCompilerError(f"codegen: format options {opts!r} are not valid JSON "
                                 f"({e})") from e
        if not isinstance(parsed, dict):
            raise QCompilerError(f"codegen: format options must be a JSON object, got {opts!r}")
        return parsed
    return dict(opts)


def plan_for(format_name: str, opts: dict[str, Any] | str | None = None) -> DecodePlan:
    """The decode plan of `format_name` under quantize options `opts` (e.g. RaZeR specials)."""
    opts = normalize_opts(opts)
    key = json.dumps(opts, sort_keys=True)
    return _plan_cached(format_name, key)


@functools.cache
def _plan_cached(format_name: str, opts_key: str) -> DecodePlan:
    from qcompiler import formats
    from qcompiler.formats import packing

    opts = json.loads(opts_key)
    fmt = formats.get(format_name)
    if fmt.role not in ("weight", "both"):
        raise QCompilerError(f"codegen: format '{fmt.name}' is an activation format; kernels are "
                             f"generated for weight formats only")
    if fmt.bits not in packing.SUPPORTED_BITS:
        raise QCompilerError(f"codegen: no packing for {fmt.bits}-bit format '{fmt.name}'")
    epu = packing.elements_per_unit(fmt.bits)
    unit_bytes = packing.packed_width(epu, fmt.bits)
    parts = _probe_parts(fmt, opts)
    scale, scale_params = _scale_plan(fmt, parts)
    family, params = _element_plan(fmt, opts, has_zero="zeros" in parts)
    return DecodePlan(
        format=fmt.name, description=fmt.description or fmt.name, bits=fmt.bits,
        elems_per_unit=epu, unit_bytes=unit_bytes, family=family, params=params,
        scale=scale, scale_params=scale_params, has_zero="zeros" in parts,
        has_meta="meta" in parts, has_global_scale="global_scale" in parts,
        part_dtypes=tuple((k, str(v).removeprefix("torch.")) for k, v in parts.items()))


def _probe_parts(fmt: Any, opts: dict[str, Any]) -> dict[str, torch.dtype]:
    """Which QTensor parts the format stores, and their dtypes: quantize one small tensor."""
    g = fmt.default_group_size or fmt.group_sizes[0]
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(2, g, generator=gen)
    q = fmt.quantize(w, group_size=g, search="rtn", **opts)
    return {k: t.dtype for k, t in q.tensors().items()}


def _scale_plan(fmt: Any, parts: dict[str, torch.dtype]) -> tuple[ScaleKind, tuple]:
    from qcompiler.formats import fp8

    if parts["scales"].is_floating_point:
        return ScaleKind.FLOAT, ()
    if fmt.scale_type == "e8m0":
        return ScaleKind.E8M0, ()
    codec_name = _SCALE_CODECS.get(fmt.scale_type)
    if codec_name is None or fmt.scale_type in _FLOAT_SCALE_TYPES:
        raise QCompilerError(f"codegen: format '{fmt.name}' stores {fmt.scale_type} scales as "
                             f"{parts['scales']}; no kernel decode for that scale type")
    codec = getattr(fp8, codec_name)
    return ScaleKind.MINIFLOAT, _minifloat_params(codec)


def _minifloat_params(codec: Any) -> tuple[tuple[str, Any], ...]:
    """Constexprs of the minifloat -> fp16 bit placement (dequant.minifloat_to_fp16)."""
    if codec.exp_bits > 5 or codec.man_bits > 10 or codec.bias > 15:
        raise QCompilerError(f"codegen: minifloat {codec.name} does not fit fp16's bit layout")
    # Placing the exponent bits at fp16's exponent field reads the value times 2^(bias - 15).
    unbias = float(2.0 ** (15 - codec.bias))
    return (("EXP_BITS", codec.exp_bits), ("MAN_BITS", codec.man_bits),
            ("SIGNED", bool(codec.signed)), ("UNBIAS", unbias))


def _element_plan(fmt: Any, opts: dict[str, Any], has_zero: bool) -> tuple[DecodeFamily, tuple]:
    from qcompiler.formats import fp8

    cb = fmt.codebook(**opts).to(torch.float32)
    n_codes = 1 << fmt.bits
    special_code, specials = -1, ()
    if cb.dim() == 2:  # RaZeR-style: one row per metadata value
        special_code, specials = _specials_of(fmt, cb)
        base = cb[0].clone()
    else:
        base = cb
    if base.numel() != n_codes:
        raise QCompilerError(f"codegen: format '{fmt.name}' codebook has {base.numel()} entries, "
                             f"expected {n_codes}")
    for codec_name in _ELEMENT_CODECS.get(fmt.bits, ()):
        codec = getattr(fp8, codec_name)
        if _matches(base, codec.table(), skip=special_code):
            # unused slots repeat the last special (or are 0.0 without specials)
            padded = specials + (specials[-1:] or (0.0,)) * (MAX_SPECIALS - len(specials))
            special_params = tuple((f"SPECIAL_{i}", float(v)) for i, v in enumerate(padded))
            return DecodeFamily.MINIFLOAT, (_minifloat_params(codec) + (
                ("SPECIAL_CODE", special_code),) + special_params)
    if special_code >= 0:
        raise QCompilerError(f"codegen: format '{fmt.name}' has a special code over a non-"
                             f"minifloat codebook; no kernel decode for it")
    vals = [float(v) for v in base]
    half = n_codes // 2
    if has_zero and vals == [float(c) for c in range(n_codes)]:
        return DecodeFamily.INT, (("XOR", 0), ("OFFSET", 0), ("HAS_ZERO", True))
    for xor in (0, half):  # offset binary (int4-sym: code = q + 8) or two's complement (int8)
        offset = (0 ^ xor) - vals[0]
        if offset == int(offset) and all(vals[c] == (c ^ xor) - offset for c in range(n_codes)):
            return DecodeFamily.INT, (("XOR", xor), ("OFFSET", int(offset)), ("HAS_ZERO", has_zero))
    if has_zero:
        raise QCompilerError(f"codegen: format '{fmt.name}' has zero points over a non-integer "
                             f"codebook; no kernel decode for it")
    symmetric = all(vals[c | half] == -vals[c] for c in range(half))
    mags = vals[:half]
    if symmetric and mags[0] > 0:
        e0 = math.log2(mags[0])
        if e0 == int(e0) and all(mags[m] == 2.0 ** (e0 - m) for m in range(half)):
            return DecodeFamily.POT, (("MAG_BITS", fmt.bits - 1), ("E0", int(e0)))
    if n_codes > MAX_TABLE_ENTRIES:
        raise QCompilerError(f"codegen: format '{fmt.name}' has a {n_codes}-entry table; the "
                             f"select tree covers at most {MAX_TABLE_ENTRIES}")
    table = mags if symmetric else vals
    sign_bit = fmt.bits - 1 if symmetric else -1
    padded = table + table[-1:] * (MAX_TABLE_ENTRIES - len(table))
    return DecodeFamily.TABLE, (("SIGN_BIT", sign_bit),) + tuple(
        (f"V{i}", v) for i, v in enumerate(padded))


def _specials_of(fmt: Any, cb: torch.Tensor) -> tuple[int, tuple[float, ...]]:
    """(special code, special values) of a [rows, codes] codebook: the one column that varies."""
    varying = [c for c in range(cb.shape[1]) if not torch.all(cb[:, c] == cb[0, c])]
    if len(varying) != 1 or cb.shape[0] > MAX_SPECIALS:
        raise QCompilerError(f"codegen: format '{fmt.name}' has a per-group codebook the kernels "
                             f"cannot decode (varying codes {varying}, {cb.shape[0]} rows)")
    col = varying[0]
    return col, tuple(float(v) for v in cb[:, col])


def _matches(table: torch.Tensor, reference: torch.Tensor, skip: int) -> bool:
    """Equal value by value, NaN codes of the reference and the `skip` code ignored."""
    if table.shape != reference.shape:
        return False
    ok = (table == reference) | torch.isnan(reference)
    if skip >= 0:
        ok[skip] = True
    return bool(ok.all())

"""The jit dequant helpers, bit-exact against the format library, for every code value.

Each test runs a one-program kernel over all codes (or all scale codes) through Triton's
interpreter and compares with the library's tables (qcompiler.formats), which are the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qcompiler.codegen import dequant
from qcompiler.formats import fp8
from qcompiler.formats.nf4 import NF4_VALUES

minifloat_to_fp16 = dequant.minifloat_to_fp16
scale_e8m0 = dequant.scale_e8m0
scale_minifloat = dequant.scale_minifloat
pot_group, pot_codes = dequant.pot_group, dequant.pot_codes
table_group, table_codes = dequant.table_group, dequant.table_codes
minifloat_group, minifloat_codes = dequant.minifloat_group, dequant.minifloat_codes


@triton.jit
def _minifloat_kernel(out_ptr, B: tl.constexpr, EXP_BITS: tl.constexpr, MAN_BITS: tl.constexpr,
                      SIGNED: tl.constexpr, UNBIAS: tl.constexpr):
    c = tl.arange(0, B)
    tl.store(out_ptr + c, scale_minifloat(c, EXP_BITS, MAN_BITS, SIGNED, UNBIAS))


@triton.jit
def _e8m0_kernel(out_ptr, B: tl.constexpr):
    c = tl.arange(0, B)
    tl.store(out_ptr + c, scale_e8m0(c))


@triton.jit
def _pot_kernel(scale_ptr, out_ptr, MAG_BITS: tl.constexpr):
    c = tl.arange(0, 16)
    s, aux = pot_group(tl.load(scale_ptr + c * 0), 0)
    tl.store(out_ptr + c, pot_codes(c & ((2 << MAG_BITS) - 1), s, aux, MAG_BITS))


@triton.jit
def _nf4_kernel(out_ptr, V0: tl.constexpr, V1: tl.constexpr, V2: tl.constexpr,
                V3: tl.constexpr, V4: tl.constexpr, V5: tl.constexpr, V6: tl.constexpr,
                V7: tl.constexpr, V8: tl.constexpr, V9: tl.constexpr, V10: tl.constexpr,
                V11: tl.constexpr, V12: tl.constexpr, V13: tl.constexpr, V14: tl.constexpr,
                V15: tl.constexpr):
    c = tl.arange(0, 16)
    s, aux = table_group(tl.full((16,), 2.0, tl.float32))
    tl.store(out_ptr + c, table_codes(c, s, aux, -1, V0, V1, V2, V3, V4, V5, V6, V7, V8, V9,
                                      V10, V11, V12, V13, V14, V15))


@triton.jit
def _razer_kernel(meta_ptr, out_ptr):
    c = tl.arange(0, 16)
    s, aux = minifloat_group(tl.full((16,), 0.5, tl.float32), tl.load(meta_ptr + c * 0),
                             16384.0, 8, 5.0, -5.0, 8.0, -8.0)
    tl.store(out_ptr + c, minifloat_codes(c, s, aux, 2, 1, True, 8))


def _table(codec: fp8.MiniFloat) -> torch.Tensor:
    n = 1 << codec.bits
    return codec.table()[:n]


def test_minifloat_bit_trick_matches_every_codec_code() -> None:
    for codec in (fp8.E2M1, fp8.E4M3, fp8.E3M3):
        n = 1 << codec.bits
        out = torch.zeros(n)
        _minifloat_kernel[(1,)](out, B=n, EXP_BITS=codec.exp_bits, MAN_BITS=codec.man_bits,
                                SIGNED=codec.signed, UNBIAS=2.0 ** (15 - codec.bias))
        ref = _table(codec)
        finite = ~torch.isnan(ref)
        assert torch.equal(out[finite], ref[finite]), codec.name
        # signs too: -0 stays -0 (E2M1 code 8), which RaZeR then replaces
        assert torch.equal(torch.signbit(out[finite]), torch.signbit(ref[finite])), codec.name


def test_e8m0_is_the_fp32_exponent_field() -> None:
    out = torch.zeros(256)
    _e8m0_kernel[(1,)](out, B=256)
    ref = fp8.e8m0_decode(torch.arange(256))
    assert torch.equal(out[1:255], ref[1:255])  # 0 is 2^-127 (fp32 subnormal), 255 is NaN


def test_pot_exponent_subtraction() -> None:
    for mag_bits in (1, 2, 3):
        for s in (1.0, 0.0078125, 3.5, 6.1e-5, 0.0, -0.0, -2.0):
            out = torch.zeros(16)
            _pot_kernel[(1,)](torch.tensor([s], dtype=torch.float16), out, MAG_BITS=mag_bits)
            n = 2 << mag_bits
            c = torch.arange(16) & (n - 1)
            mag = 2.0 ** -(c & ((1 << mag_bits) - 1)).float()
            sign = torch.where((c >> mag_bits) & 1 == 1, -1.0, 1.0)
            ref = sign * mag * torch.tensor(s, dtype=torch.float16).float()
            assert torch.equal(out, ref), (mag_bits, s, out, ref)


def test_table_select_tree_is_nf4() -> None:
    out = torch.zeros(16)
    _nf4_kernel[(1,)](out, *NF4_VALUES)
    assert torch.equal(out, torch.tensor(NF4_VALUES) * 2.0)


def test_razer_special_value_select() -> None:
    fp4 = torch.tensor([0, .5, 1, 1.5, 2, 3, 4, 6, 0, -.5, -1, -1.5, -2, -3, -4, -6])
    for meta, special in enumerate((5.0, -5.0, 8.0, -8.0)):
        out = torch.zeros(16)
        _razer_kernel[(1,)](torch.tensor([meta], dtype=torch.uint8), out)
        ref = fp4 * 0.5
        ref[8] = special * 0.5
        assert torch.equal(out, ref), (meta, out)


def test_helper_source_is_the_module_source() -> None:
    from qcompiler.codegen.decode_plan import plan_for

    text = dequant.helper_source(plan_for("razer4"))
    assert "def minifloat_to_fp16(" in text and "def minifloat_codes(" in text
    assert "def pot_codes(" not in text  # only the family's helpers
    assert text.count("@triton.jit") == 3

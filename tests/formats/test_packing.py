"""Bit packing: round trip for every width and the exact byte layout of docs/CONTRACTS.md."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler import formats
from qcompiler.errors import QCompilerError
from qcompiler.formats import packing


@settings(max_examples=30, deadline=None, derandomize=True)
@given(bits=st.sampled_from(packing.SUPPORTED_BITS), rows=st.integers(1, 3),
       units=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(bits, rows, units, seed):
    k = units * packing.elements_per_unit(bits)
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (rows, k), generator=gen, dtype=torch.int64)
    packed = packing.pack(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (rows, packing.packed_width(k, bits)) == (rows, k * bits // 8)
    assert torch.equal(packing.unpack(packed, bits, k), codes.to(torch.uint8))


def test_4bit_layout_low_nibble_first():
    packed = packing.pack(torch.tensor([[0x1, 0xA, 0xF, 0x0]]), 4)
    assert packed.tolist() == [[0xA1, 0x0F]]


def test_2bit_layout():
    packed = packing.pack(torch.tensor([[1, 2, 3, 0, 3, 3, 3, 3]]), 2)
    assert packed.tolist() == [[0b00111001, 0xFF]]


def test_3bit_layout_is_a_little_endian_24bit_word():
    codes = [1, 2, 3, 4, 5, 6, 7, 0]
    word = sum(c << (3 * i) for i, c in enumerate(codes))
    packed = packing.pack(torch.tensor([codes]), 3)
    assert packed.tolist() == [[word & 0xFF, (word >> 8) & 0xFF, word >> 16]]


@pytest.mark.parametrize("bits,k", [(4, 3), (2, 6), (3, 12)])
def test_k_not_a_multiple_of_the_unit_is_an_error(bits, k):
    with pytest.raises(QCompilerError, match=f"{bits}-bit packing needs K divisible by"):
        packing.pack(torch.zeros(1, k, dtype=torch.int64), bits)


@pytest.mark.parametrize("name", formats.names())
def test_quantized_codes_unpack_within_the_code_range(name):
    fmt = formats.get(name)
    w = torch.randn(2, 256, generator=torch.Generator().manual_seed(0))
    q = fmt.quantize(w)
    codes = packing.unpack(q.codes, fmt.bits, 256)
    assert int(codes.max()) < 1 << fmt.bits

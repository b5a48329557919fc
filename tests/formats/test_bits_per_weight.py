"""bits_per_weight against hand-computed numbers, and against the bytes a QTensor really holds."""

from __future__ import annotations

import pytest
import torch

from qcompiler import formats
from qcompiler.errors import QCompilerError

# (format, group size) -> code bits + per-group bits / group size, worked out by hand
EXPECTED = {
    ("int4", 128): 4 + (16 + 8) / 128,    # fp16 scale + uint8 zero point = 4.1875
    ("int3", 128): 3 + (16 + 8) / 128,    # 3.1875
    ("int2", 64): 2 + (16 + 8) / 64,      # 2.375
    ("int4-sym", 128): 4 + 16 / 128,      # 4.125
    ("fp4", 128): 4.125,
    ("fp4", 32): 4.5,
    ("nf4", 64): 4.25,
    ("dint4", 128): 4.125,
    ("pot4", 128): 4.125,
    ("pot3", 128): 3.125,
    ("pot2", 32): 2.5,
    ("razer4", 128): 4 + (16 + 2) / 128,  # fp16 scale + 2-bit special index = 4.140625
    ("razer4-kv", 64): 4 + 18 / 64,
    ("mxfp4", 32): 4 + 8 / 32,            # E8M0 per 32 = 4.25
    ("nvfp4", 16): 4 + 8 / 16,            # E4M3 per 16 = 4.5 (+ one fp32 per tensor, not counted)
    ("nvfp4-razer", 16): 4 + 8 / 16,      # 6-bit E3M3 + 2-bit index in one byte: NVFP4's footprint
    ("int8", 128): 8 + 32 / 128,          # fp32 scale per group = 8.25
    ("fp8-e4m3", 64): 8 + 32 / 64,
}


def test_every_format_is_checked():
    assert {name for name, _ in EXPECTED} == set(formats.names())


@pytest.mark.parametrize("name,g", sorted(EXPECTED))
def test_bits_per_weight_by_hand(name, g):
    assert formats.get(name).bits_per_weight(g) == pytest.approx(EXPECTED[(name, g)], abs=1e-12)


def test_defaults_and_per_token_formats():
    assert formats.get("razer4").bits_per_weight() == EXPECTED[("razer4", 128)]
    assert formats.get("nf4").bits_per_weight() == 4.25  # QLoRA's default block of 64
    with pytest.raises(QCompilerError, match="needs a group size"):
        formats.get("int8").bits_per_weight()
    with pytest.raises(QCompilerError, match="group size 48 is not allowed"):
        formats.get("fp4").bits_per_weight(48)


@pytest.mark.parametrize("name", formats.names())
def test_stored_bytes_match_bits_per_weight(name):
    """Formats whose parts are all counted at their stored width hold exactly bits_per_weight;
    RaZeR metadata sits in a uint8 tensor but counts as its 2 bits (kernels pack it)."""
    fmt = formats.get(name)
    g = fmt.group_sizes[-1] if fmt.per_row else (fmt.default_group_size or fmt.group_sizes[0])
    n, k = 4, 512
    q = fmt.quantize(torch.randn(n, k), group_size=g)
    parts = {key: t for key, t in q.tensors().items() if key not in ("meta", "global_scale")}
    stored = sum(t.numel() * t.element_size() * 8 for t in parts.values()) / (n * k)
    meta_bits = fmt.group_overhead_bits() - {"fp16": 16, "e4m3": 8, "e8m0": 8, "e3m3": 6,
                                             "fp32": 32}[fmt.scale_type]
    if fmt.has_zero_point:
        meta_bits -= 8
    scale_stored_wider = fmt.scale_type == "e3m3"  # 6-bit codes kept in uint8
    expected = fmt.bits_per_weight(g) - meta_bits / g + (2 / g if scale_stored_wider else 0)
    assert stored == pytest.approx(expected)

"""RaZeR's special values, and the rounding of ties that FORMATS.md leaves to us (documented in
grid.py and razer.py: ties go to the even code; a special value must be strictly closer than the
FP4 value to replace it)."""

from __future__ import annotations

import pytest
import torch

from qcompiler import formats
from qcompiler.formats.fp4 import FP4_VALUES, decode_e2m1_fp16
from qcompiler.formats.fp8 import E3M3
from qcompiler.formats.razer import RAZER_SPECIALS


def quantize_rtn(name: str, row: list[float], **opts) -> tuple[torch.Tensor, formats.QTensor]:
    fmt = formats.get(name)
    w = torch.tensor([row], dtype=torch.float32)
    q = fmt.quantize(w, group_size=len(row), search="rtn", **opts)
    return fmt.dequantize(q)[0], q


def padded(values: list[float], g: int = 16) -> list[float]:
    return values + [0.0] * (g - len(values))


@pytest.mark.parametrize("index,special", list(enumerate(RAZER_SPECIALS)))
@pytest.mark.parametrize("s", [1.0, 0.0078125, 96.5])
def test_razer_group_with_a_special_value_reproduces_it(index, special, s):
    other_extreme = -6.0 if special > 0 else 6.0
    row = padded([special * s, other_extreme * s, 1.5 * s, -0.5 * s, 3 * s])
    for search in ("rtn", "clip"):
        q = formats.get("razer4").quantize(torch.tensor([row]), group_size=16, search=search)
        assert torch.equal(formats.get("razer4").dequantize(q)[0], torch.tensor(row))
        assert q.meta.tolist() == [[index]]
        assert float(q.scales[0, 0]) == s


def test_razer_special_beats_plain_fp4_on_a_group_near_five():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 128, generator=gen)
    w[:, ::16] = 5.0 * w.abs().amax(-1, keepdim=True) / 6  # values on FP4's 4..6 gap
    err = {n: float((formats.get(n).dequantize(formats.get(n).quantize(w)) - w).square().sum())
           for n in ("fp4", "razer4")}
    assert err["razer4"] < 0.85 * err["fp4"]


def test_nvfp4_razer_block_with_special_reproduces_it():
    fmt = formats.get("nvfp4-razer")
    g = 2.0 ** -6
    top = [6.0, -6.0] + [1.0] * 14  # sets the global scale: 6 * 28 * g
    block = [5.0, -6.0, 2.0, 0.5] + [0.0] * 12
    w = torch.tensor([top + block]) * torch.tensor([28.0] * 16 + [1.5] * 16) * g
    q = fmt.quantize(w)
    assert torch.equal(fmt.dequantize(q), w)
    assert q.meta.tolist() == [[0, 0]]
    assert E3M3.decode(q.scales).tolist() == [[28.0, 1.5]]
    assert float(q.global_scale) == g


def test_custom_specials_travel_in_opts():
    fmt = formats.get("razer4")
    row = padded([7.0, -6.0, 1.0])
    q = fmt.quantize(torch.tensor([row]), group_size=16, specials=(7.0, -7.0))
    assert q.opts == {"specials": [7.0, -7.0]} and q.meta.tolist() == [[0]]
    assert torch.equal(fmt.dequantize(q)[0], torch.tensor(row))


def test_e2m1_bit_trick_matches_the_table():
    codes = torch.arange(16)
    got = decode_e2m1_fp16(codes).to(torch.float32)
    assert torch.equal(got, torch.tensor(FP4_VALUES))
    assert torch.signbit(got[8])  # code 8 is -0, the pattern RaZeR reuses


@pytest.mark.parametrize("name", ["fp4", "mxfp4", "nvfp4"])
def test_fp4_ties_go_to_the_even_code(name):
    # scale 1 (6 is the group max); midpoints: .25 .75 1.25 1.75 2.5 3.5 5
    row = padded([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.75, -2.5, -5.0])
    if name == "nvfp4":  # global scale: make the block scale 448 exactly
        row = [v * 448 * 2.0 ** -8 for v in row]
    got, _ = quantize_rtn(name, row + ([0.0] * 16 if name == "mxfp4" else []))
    want = padded([6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -1.0, -2.0, -4.0])
    if name == "nvfp4":
        want = [v * 448 * 2.0 ** -8 for v in want]
    assert got[:16].tolist() == want


def test_razer_tie_with_the_special_keeps_the_fp4_value():
    # special +5 is chosen (the 5 is exact); 5.5 is midway 5|6 and 4.5 midway 4|5: FP4 wins
    got, q = quantize_rtn("razer4", padded([6.0, -6.0, 5.0, 5.5, 4.5]))
    assert q.meta.tolist() == [[0]]
    assert got[:5].tolist() == [6.0, -6.0, 5.0, 6.0, 4.0]


def test_integer_ties_round_half_to_even():
    got, _ = quantize_rtn("int4-sym", padded([7.0, 2.5, 3.5, -0.5, -1.5, 0.5]))
    assert got[:6].tolist() == [7.0, 2.0, 4.0, 0.0, -2.0, 0.0]
    got, _ = quantize_rtn("int8", padded([127.0, 2.5, -3.5, 0.5]))
    assert got[:4].tolist() == [127.0, 2.0, -4.0, 0.0]


def test_int4_sym_uses_minus_eight_for_a_negative_extreme():
    got, q = quantize_rtn("int4-sym", padded([-8.0, 7.0, 3.0, -4.0]))
    assert float(q.scales[0, 0]) == 1.0 and got[:4].tolist() == [-8.0, 7.0, 3.0, -4.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", formats.names())
def test_cuda_matches_cpu(name):
    fmt = formats.get(name)
    w = torch.randn(32, 512, generator=torch.Generator().manual_seed(3))
    cpu = fmt.quantize(w)
    gpu = fmt.quantize(w.cuda()).to("cpu")
    for key, t in cpu.tensors().items():
        assert torch.equal(t, gpu.tensors()[key]), key

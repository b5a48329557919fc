"""User mistakes give one-line QCompilerErrors that say how to fix them."""

from __future__ import annotations

import pytest
import torch

from qcompiler import formats
from qcompiler.errors import QCompilerError


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_unknown_format_lists_the_known_ones():
    with pytest.raises(QCompilerError) as e:
        formats.get("razer5")
    msg = one_line(e)
    assert "unknown format 'razer5'" in msg and "did you mean 'razer4'" in msg
    for name in formats.names():
        assert name in msg


def test_check_name_is_get_without_loading_torch():
    """The torch-free name list is the registry's, and a typo gets get()'s message from a
    process that never imports torch (the CLI's usage error)."""
    import subprocess
    import sys

    assert list(formats.BUILTIN_NAMES) == formats.names()[:len(formats.BUILTIN_NAMES)]  # _load checks each
    formats.check_name("nvfp4-razer")
    with pytest.raises(QCompilerError) as e:
        formats.get("razer5")
    with pytest.raises(QCompilerError) as e2:
        formats.check_name("razer5")
    assert str(e2.value) == str(e.value)
    code = ("import sys\nfrom qcompiler import formats\ntry:\n    formats.check_name('fp5')\n"
            "except Exception as e:\n    print(e)\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0].startswith("unknown format 'fp5'") and out[1] == "False"


@pytest.mark.parametrize("name", formats.names())
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_is_a_clear_error(name, bad):
    w = torch.randn(4, 128)
    w[2, 5] = bad
    with pytest.raises(QCompilerError) as e:
        formats.get(name).quantize(w, group_size=formats.get(name).group_sizes[0])
    msg = one_line(e)
    assert f"format '{name}'" in msg and "NaN/Inf" in msg and "[2, 5]" in msg


@pytest.mark.parametrize("name", formats.names())
def test_k_not_divisible_by_group_names_a_valid_group_size(name):
    fmt = formats.get(name)
    if len(fmt.group_sizes) == 1:
        pytest.skip("one group size: covered by test_no_allowed_group_size_divides_k")
    g = max(fmt.group_sizes)
    k = g * 3 + min(fmt.group_sizes)  # a multiple of the smallest size only
    with pytest.raises(QCompilerError) as e:
        fmt.quantize(torch.randn(2, k), group_size=g)
    msg = one_line(e)
    assert f"group size {g} does not divide K={k}" in msg
    fits = [x for x in fmt.group_sizes if k % x == 0]
    assert f"use group size {max(fits)}" in msg


@pytest.mark.parametrize("name", formats.names())
def test_no_allowed_group_size_divides_k(name):
    fmt = formats.get(name)
    k = min(fmt.group_sizes) * 5 + min(fmt.group_sizes) // 2  # a multiple of 4: packs at any bits
    with pytest.raises(QCompilerError) as e:
        fmt.quantize(torch.randn(2, k), group_size=min(fmt.group_sizes))
    msg = one_line(e)
    allowed = ", ".join(str(g) for g in fmt.group_sizes)
    assert f"no allowed group size ({allowed}) divides K; pad K to a multiple of " \
           f"{min(fmt.group_sizes)}" in msg


@pytest.mark.parametrize("name", formats.names())
def test_group_size_not_allowed_lists_allowed(name):
    fmt = formats.get(name)
    with pytest.raises(QCompilerError) as e:
        fmt.quantize(torch.randn(2, 96 * 8), group_size=96)
    msg = one_line(e)
    assert "group size 96 is not allowed" in msg
    assert ", ".join(str(g) for g in fmt.group_sizes) in msg


def test_bad_shape_dtype_option_and_search():
    fp4 = formats.get("fp4")
    with pytest.raises(QCompilerError, match="expected a 2-D"):
        fp4.quantize(torch.randn(128))
    with pytest.raises(QCompilerError, match="floating-point"):
        fp4.quantize(torch.ones(2, 128, dtype=torch.int32))
    with pytest.raises(QCompilerError, match="has no option 'scales'.*did you mean 'scale'"):
        fp4.quantize(torch.randn(2, 128), scales="pow2")
    with pytest.raises(QCompilerError, match="option scale='pow3' is not one of"):
        fp4.quantize(torch.randn(2, 128), scale="pow3")
    with pytest.raises(QCompilerError, match="unknown search 'mse'; use one of rtn, clip"):
        fp4.quantize(torch.randn(2, 128), search="mse")


def test_dequantize_rejects_another_formats_tensor():
    q = formats.get("fp4").quantize(torch.randn(2, 128))
    with pytest.raises(QCompilerError, match="'razer4' cannot dequantize a 'fp4' tensor"):
        formats.get("razer4").dequantize(q)

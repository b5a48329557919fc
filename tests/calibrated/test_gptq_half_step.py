"""gptq{search=half-step}: each group's scale is the smallest with every element within half a
step of the grid ([-8.5, 7.5]·s for int4-sym), and only grid formats accept it."""

from __future__ import annotations

import pytest
import torch

from qcompiler import formats
from qcompiler.gptq_core import group_params, gptq_quantize, half_step_factors


def test_int4_sym_half_step_scale_is_extremes_over_seven_and_a_half_or_eight_and_a_half():
    fmt = formats.get("int4-sym")
    assert half_step_factors(fmt) == (7 / 7.5, 8 / 8.5)
    w = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    q = group_params(fmt, w, 32, "half-step", None)
    want = torch.maximum(w.amax(1) / 7.5, -w.amin(1) / 8.5).to(torch.float16)
    assert torch.equal(q.scales[:, 0], want)  # exact: fp16 rounding of the same number


def test_half_step_gptq_errors_stay_within_half_a_step():
    # H = I: no error to spread, so GPTQ is rounding to the nearest table value per group
    fmt = formats.get("int4-sym")
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    q = gptq_quantize(fmt, w, torch.eye(64), 32, search="half-step")
    s = q.scales.to(torch.float32).repeat_interleave(32, 1)
    err = (fmt.dequantize(q) - w).abs()
    # half a step, plus what rounding the scale to the nearest fp16 can add at code 8.5
    assert bool((err <= s * (0.5 + 8.5 * 2.0 ** -11)).all())
    rtn = fmt.quantize(w, 32, search="rtn").scales.to(torch.float32)
    assert bool((q.scales.to(torch.float32) < rtn).all())  # a finer grid than RTN's


def test_half_step_needs_a_grid_format():
    with pytest.raises(ValueError, match="half-step needs a grid format"):
        gptq_quantize(formats.get("razer4"), torch.randn(4, 32), torch.eye(32), 32,
                      search="half-step")

"""clip, lorc and pot-refine: each lowers the error it is meant to lower, and plans its result."""

from __future__ import annotations

import pytest
import torch
from calib_helpers import correlated, out_err

from qcompiler import formats
from qcompiler.calibration import CalibrationConfig, calibration_batches, collect_linear_stats
from qcompiler.errors import QCompilerError, UsageError
from qcompiler.ir import print_program
from qcompiler.pass_manager import run_pipeline
from qcompiler.passes.clip import grid_search
from qcompiler.passes.lorc import low_rank
from qcompiler.passes.pot_refine import refine, row_error
from qcompiler.passes_base import PassContext


def ctx_small() -> PassContext:
    return PassContext(calibration=CalibrationConfig(samples=4, seqlen=16))


def proj_inputs(program, ctx) -> torch.Tensor:
    return collect_linear_stats(program, calibration_batches(program, ctx), ["proj"],
                                max_samples=10_000)["proj"].samples


@pytest.mark.parametrize("name", ["razer4", "int4"])
def test_clip_output_mse_beats_rtn_on_calibration_data(mixed_program, name):
    ctx = ctx_small()
    w = mixed_program.get_tensor("proj.weight").clone()
    run_pipeline(mixed_program, f"clip{{format={name},group-size=32,skip=mix}}", ctx)
    x = proj_inputs(mixed_program, ctx)
    fmt = formats.get(name)
    planned = mixed_program.get_tensor("proj.weight")
    rtn = fmt.dequantize(fmt.quantize(w, 32, search="rtn"))
    weight_mse = fmt.dequantize(fmt.quantize(w, 32, search="clip"))
    assert out_err(x, w, planned) < out_err(x, w, rtn)
    assert out_err(x, w, planned) <= out_err(x, w, weight_mse) * 1.001
    assert '{plan = "' + name + ' g32 by clip"}' in print_program(mixed_program)


@pytest.mark.parametrize("name", ["fp4", "nvfp4", "int4"])
def test_clip_grid_never_worse_than_rtn(name):
    fmt = formats.get(name)
    w, x = correlated(n=16, k=64, t=256)
    group = 16
    q = grid_search(fmt, w, group, (1.0, 0.95, 0.9, 0.85, 0.8, 0.7), x)
    w_hat = fmt.dequantize(q)
    rtn = fmt.dequantize(fmt.quantize(w, group, search="rtn"))
    assert out_err(x, w, w_hat) < out_err(x, w, rtn)
    again = fmt.dequantize(grid_search(fmt, w, group, (1.0,), None))
    assert torch.equal(again, rtn)  # ratio 1 is the format's own RTN


def test_clip_grid_option_checked():
    from qcompiler.pipeline import parse_pipeline

    with pytest.raises(UsageError, match="grid ratios must be in"):
        parse_pipeline("clip{format=int4,grid=1.0,1.5}")


def test_lorc_error_falls_with_rank():
    w, x = correlated(n=48, k=128, t=512)
    fmt = formats.get("fp4")
    w_hat = fmt.dequantize(fmt.quantize(w, 32))
    werr, oerr = [], []
    for rank in (1, 4, 16):
        a, b = low_rank(w - w_hat, rank)
        corrected = w_hat + b.float() @ a.float()
        werr.append(float(((w - corrected) ** 2).sum()))
        oerr.append(out_err(x, w, corrected))
    base = float(((w - w_hat) ** 2).sum())
    assert base > werr[0] > werr[1] > werr[2]
    assert out_err(x, w, w_hat) > oerr[0] > oerr[1] > oerr[2]


def test_lorc_rewrites_graph_and_lowering_keeps_it_fp(mixed_program):
    ctx = ctx_small()
    inputs = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(5))
    reference = mixed_program(inputs)
    run_pipeline(mixed_program, "gptq{format=int4,group-size=32,skip=mix}", ctx)
    after_gptq = mixed_program(inputs)
    run_pipeline(mixed_program, "lorc{format=int4,group-size=32,rank=8,skip=mix}", ctx)
    ir = print_program(mixed_program)
    assert 'qc.param "proj.lorc_a.weight" : tensor<8x128xf16>' in ir
    assert 'qc.param "proj.lorc_b.weight" : tensor<48x8xf16>' in ir
    assert '{plan = "int4 g32 by gptq"}' in ir  # lorc reused gptq's plan
    after_lorc = mixed_program(inputs)
    err = lambda y: float(((y - reference) ** 2).sum())  # noqa: E731
    assert err(after_lorc) < err(after_gptq)
    run_pipeline(mixed_program, "lower-datatype{format=int4,group-size=32,skip=mix},dce", ctx)
    ir = print_program(mixed_program)
    assert ir.count("qc.linear_int4(") == 1 and ir.count("aten.linear(") == 3  # mix + A + B
    torch.testing.assert_close(mixed_program(inputs), after_lorc, rtol=1e-4, atol=1e-4)


def test_pot_refine_lowers_output_error_vs_init():
    w, x = correlated(n=48, k=128, t=512)
    fmt = formats.get("pot4")
    h = x.T @ x / x.shape[0]
    q0 = fmt.quantize(w, 32, search="clip")
    q1, improved = refine(fmt, q0, w, h, steps=100, lr=0.01)
    e0 = row_error(w, fmt.dequantize(q0), h)
    e1 = row_error(w, fmt.dequantize(q1), h)
    assert bool((e1 <= e0).all())  # never worse, row by row
    assert float(e1.sum()) < 0.9 * float(e0.sum())  # measured 0.81x
    assert improved > w.shape[0] // 2
    assert torch.equal(q1.codes, q0.codes)  # codes fixed: only scales move
    assert q1.scales.dtype == torch.float16


def test_pot_refine_pass_and_error(mixed_program, tmp_path):
    ctx = ctx_small()
    run_pipeline(mixed_program, "pot-refine{format=pot3,group-size=32,steps=20,skip=mix}", ctx)
    assert '{plan = "pot3 g32 by pot-refine"}' in print_program(mixed_program)
    with pytest.raises(QCompilerError, match="pot-refine: format 'int4' is not a power-of-two"):
        run_pipeline(mixed_program, "pot-refine{format=int4}", ctx, reproducer_dir=tmp_path)

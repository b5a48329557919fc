"""ZeroQuant-FP's scale constraints as a pass option (`scale=pow2|pow2-row`, `--scale`): every
quantizing pass keeps them, lower-datatype uses the plans made with them, and what cannot hold
them is a one-line error before any work."""

from __future__ import annotations

import pytest
import torch
from calib_helpers import correlated, out_err

from qcompiler import formats
from qcompiler.calibration import CalibrationConfig
from qcompiler.errors import UsageError
from qcompiler.gptq_core import gptq_quantize
from qcompiler.pass_manager import run_pipeline
from qcompiler.passes_base import PassContext
from qcompiler.pipeline import check_format_options, parse_pipeline, resolve_pipeline


def is_pow2(s: torch.Tensor) -> bool:
    """Every entry a power of two (exactly: log2 is an integer)."""
    e = torch.log2(s.to(torch.float32))
    return bool((s > 0).all()) and torch.equal(e, e.round())


def ctx_small() -> PassContext:
    return PassContext(calibration=CalibrationConfig(samples=4, seqlen=16))


def proj_entry(ctx: PassContext) -> dict:
    (entry,) = [e for e in ctx.report["layers"] if e["name"] == "proj"]
    return entry


@pytest.mark.parametrize("name", ["fp4", "razer4"])
def test_gptq_with_pow2_scales_keeps_them_and_beats_rtn(name):
    fmt = formats.get(name)
    w, x = correlated()
    q = gptq_quantize(fmt, w, x.T @ x, 32, opts={"scale": "pow2"})
    assert q.opts == {"scale": "pow2"} and is_pow2(q.scales)
    rtn = fmt.quantize(w, 32, search="rtn", scale="pow2")
    assert is_pow2(rtn.scales)
    # measured: ~0.5x of RTN's output error; the bound leaves room for seeds
    assert out_err(x, w, fmt.dequantize(q)) < 0.75 * out_err(x, w, fmt.dequantize(rtn))


@pytest.mark.parametrize("planner", ["gptq", "clip", "lorc"])
def test_lowering_uses_the_plan_made_with_the_same_scale(mixed_program, planner):
    ctx = ctx_small()
    run_pipeline(mixed_program, f"{planner}{{format=fp4,group-size=32,skip=mix,scale=pow2}},"
                 "lower-datatype{format=fp4,group-size=32,skip=mix,scale=pow2}", ctx)
    layer = proj_entry(ctx)
    assert layer["status"] == "quantized" and layer["planned_by"] == planner
    assert is_pow2(mixed_program.get_tensor("proj.scales"))


def test_a_plan_with_other_scales_is_quantized_again_with_a_warning(mixed_program, capsys):
    ctx = ctx_small()
    run_pipeline(mixed_program, "gptq{format=fp4,group-size=32,skip=mix},"
                 "lower-datatype{format=fp4,group-size=32,skip=mix,scale=pow2}", ctx)
    assert "proj was planned as fp4 g32 by gptq but is lowered to fp4 g32 scale=pow2" in \
        capsys.readouterr().err
    assert "planned_by" not in proj_entry(ctx)
    assert is_pow2(mixed_program.get_tensor("proj.scales"))


def test_pow2_row_shares_one_real_scale_per_row(mixed_program):
    ctx = ctx_small()
    run_pipeline(mixed_program, "clip{format=razer4,group-size=32,skip=mix,scale=pow2-row},"
                 "lower-datatype{format=razer4,group-size=32,skip=mix,scale=pow2-row}", ctx)
    assert proj_entry(ctx)["planned_by"] == "clip"
    s = mixed_program.get_tensor("proj.scales").to(torch.float32)  # [N, groups]
    row = s.amax(1, keepdim=True)
    assert is_pow2(s / row) and bool((s <= row).all())
    assert not is_pow2(row)  # a real row scale (else this test would not tell M2 from M1)


@pytest.mark.parametrize("spec, message", [
    ("lower-datatype{format=int4,scale=pow2}",
     "lower-datatype: format int4 has no scale option; scale=pow2 applies to fp4, razer4"),
    ("gptq{format=fp4,scale=pow2-row}",
     "gptq: scale=pow2-row shares one real scale per row, which a group-at-a-time quantizer "
     "cannot keep; use scale=pow2, or plan the layer with clip (its own search) or "
     "lower-datatype"),
    ("clip{format=razer4,grid=1.0,0.9,scale=pow2-row}", "clip: scale=pow2-row shares one"),
    ("lorc{format=nf4,scale=pow2}", "lorc: format nf4 has no scale option"),
])
def test_scales_a_pass_cannot_keep_fail_before_capture(spec, message):
    with pytest.raises(UsageError) as e:
        check_format_options(parse_pipeline(spec))
    assert str(e.value).startswith(message)
    check_format_options(parse_pipeline(spec.replace("pow2-row", "pow2")
                                        .replace("int4", "fp4").replace("nf4", "fp4")))


def test_cli_scale_fills_every_quantizing_pass():
    spec = resolve_pipeline("fp4-max", "fp4", None, scale="pow2")
    assert "gptq{format=fp4,scale=pow2}" in spec
    assert "lower-datatype{format=fp4,scale=pow2}" in spec
    assert resolve_pipeline(None, "razer4", 64, scale="pow2-row") == (
        "canonicalize,dce,lower-datatype{format=razer4,group-size=64,scale=pow2-row},dce")
    # unset: the default pipelines are unchanged (same bytes as before the option existed)
    assert "scale" not in resolve_pipeline("fp4-max", "fp4", None)

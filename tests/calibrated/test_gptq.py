"""GPTQ: lower output error than RTN in several formats, values on the format's grid, and
lower-datatype packs exactly GPTQ's codes."""

from __future__ import annotations

import pytest
import torch

from qcompiler import formats
from qcompiler.calibration import CalibrationConfig, calibration_batches, collect_linear_stats
from qcompiler.formats import packing
from qcompiler.gptq_core import (gptq_quantize, permute_symmetric_, round_to_table, slice_groups,
                                 value_table)
from qcompiler.pass_manager import run_pipeline
from qcompiler.passes_base import PassContext

from calib_helpers import correlated, out_err


@pytest.mark.parametrize("name", ["int4", "razer4", "pot4", "nvfp4"])
def test_gptq_beats_rtn_and_clip(name):
    fmt = formats.get(name)
    w, x = correlated()
    group = 32 if name != "nvfp4" else 16
    q = gptq_quantize(fmt, w, x.T @ x, group)
    gptq = out_err(x, w, fmt.dequantize(q))
    rtn = out_err(x, w, fmt.dequantize(fmt.quantize(w, group, search="rtn")))
    clip = out_err(x, w, fmt.dequantize(fmt.quantize(w, group)))
    # measured: GPTQ roughly halves the output error of RTN on correlated inputs
    assert gptq < 0.75 * rtn, (gptq, rtn)
    assert gptq < clip, (gptq, clip)


@pytest.mark.parametrize("name", ["razer4", "int4", "pot3", "nvfp4"])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_values_are_on_the_grid(name, act_order):
    fmt = formats.get(name)
    w, x = correlated(n=16, k=64, t=256)
    group = 16
    q = gptq_quantize(fmt, w, x.T @ x, group, act_order=act_order)
    w_hat = fmt.dequantize(q)
    codes = packing.unpack(q.codes, fmt.bits, 64)
    for g in range(64 // group):
        table = value_table(fmt, slice_groups(q, g, g + 1))
        cols = w_hat[:, g * group:(g + 1) * group]
        # re-quantizing with the group's own parameters gives back exactly the same values
        values, again = round_to_table(cols, table)
        assert torch.equal(values, cols)
        assert torch.equal(table.gather(1, codes[:, g * group:(g + 1) * group].long()), cols)
    if q.global_scale is not None:  # one per-tensor scale, that of the original weight
        ref = fmt.quantize(w, group, search="rtn")
        assert torch.equal(q.global_scale, ref.global_scale)


def test_gptq_handles_dead_inputs():
    fmt = formats.get("int4")
    w, x = correlated(n=8, k=32, t=64)
    x[:, 5] = 0  # a channel that never fires: H[5, 5] = 0
    for overwrite in (False, True):
        q = gptq_quantize(fmt, w, x.T @ x, 16, overwrite_hessian=overwrite)
        assert torch.isfinite(fmt.dequantize(q)).all()


def gptq_then_lower(program, fmt: str, lower_fmt: str | None = None, ctx=None):
    ctx = ctx or PassContext(calibration=CalibrationConfig(samples=4, seqlen=16))
    run_pipeline(program, f"gptq{{format={fmt},group-size=32,skip=mix}}", ctx)
    plan = program.meta["weight_plans"]["proj"]
    # proj's calibration inputs (mix is skipped, so they are the ones GPTQ saw)
    x = collect_linear_stats(program, calibration_batches(program, ctx), ["proj"],
                             max_samples=10_000)["proj"].samples
    run_pipeline(program, f"lower-datatype{{format={lower_fmt or fmt},group-size=32,skip=mix}}",
                 ctx)
    return plan, x, ctx


@pytest.mark.parametrize("name", ["razer4", "pot4"])
def test_lower_datatype_packs_gptq_codes_exactly(mixed_program, name):
    w = mixed_program.get_tensor("proj.weight").clone()
    ctx = PassContext(calibration=CalibrationConfig(samples=4, seqlen=16))
    plan, x, ctx = gptq_then_lower(mixed_program, name, ctx=ctx)
    qt = plan["qtensor"]
    for part, value in qt.tensors().items():
        assert torch.equal(mixed_program.get_tensor(f"proj.{part}"), value), part
    entry = next(e for e in ctx.report["layers"] if e["name"] == "proj")
    assert entry["planned_by"] == "gptq"
    assert "proj" not in mixed_program.meta.get("weight_plans", {})  # used, then dropped
    # and the pass did its job on this layer's calibration inputs
    fmt = formats.get(name)
    rtn = fmt.dequantize(fmt.quantize(w, 32, search="rtn"))
    assert out_err(x, w, fmt.dequantize(qt)) < out_err(x, w, rtn)


def test_format_mismatch_warns_once_and_requantizes(mixed_program):
    import io

    stream = io.StringIO()
    ctx = PassContext(calibration=CalibrationConfig(samples=2, seqlen=8), stream=stream)
    original = mixed_program.get_tensor("proj.weight").detach().clone()
    run_pipeline(mixed_program, "gptq{format=int4,group-size=32}", ctx)
    assert set(mixed_program.meta["weight_plans"]) == {"mix", "proj"}
    run_pipeline(mixed_program, "lower-datatype{format=razer4,group-size=32}", ctx)
    warnings = [l for l in stream.getvalue().splitlines() if l.startswith("warning:")]
    assert len(warnings) == 1 and "was planned as int4 g32 by gptq" in warnings[0]
    assert all("planned_by" not in e for e in ctx.report["layers"])
    # the fp weight was quantized, not gptq's int4 values: same codes as razer4 of the original
    fmt = formats.get("razer4")
    direct = fmt.quantize(original, group_size=32)
    assert torch.equal(mixed_program.get_tensor("proj.codes"), direct.codes)


def test_changed_weight_invalidates_plan(mixed_program):
    ctx = PassContext(calibration=CalibrationConfig(samples=2, seqlen=8))
    run_pipeline(mixed_program, "gptq{format=int4,group-size=32,skip=mix}", ctx)
    w = mixed_program.get_tensor("proj.weight")
    mixed_program.set_tensor("proj.weight", w * 1.5)  # e.g. a smoothing pass ran in between
    run_pipeline(mixed_program, "lower-datatype{format=int4,group-size=32,skip=mix}", ctx)
    entry = next(e for e in ctx.report["layers"] if e["name"] == "proj")
    assert "planned_by" not in entry


def test_gptq_option_errors():
    from qcompiler.errors import UsageError
    from qcompiler.pipeline import parse_pipeline

    with pytest.raises(UsageError, match="missing required option 'format'"):
        parse_pipeline("gptq")
    with pytest.raises(UsageError, match="damp must be in"):
        parse_pipeline("gptq{format=int4,damp=2}")


def _textbook_factor(h, damp):
    """(H + λI)⁻¹'s upper Cholesky factor in float32 (as the reference GPTQ code computes it),
    each step a new tensor (what the in-place one must reproduce bit for bit), raising λ
    tenfold until H + λI is positive definite; returns (factor, retries)."""
    eye = torch.eye(h.shape[0])
    mean = float(torch.diagonal(h).mean())
    for attempt in range(6):
        chol, info = torch.linalg.cholesky_ex(h + damp * 10 ** attempt * max(mean, 1e-12) * eye)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(chol), upper=True)
            if int(info) == 0:
                return upper, attempt
    raise AssertionError("not positive definite")


def _rank_deficient_hessian():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 96, generator=g)
    h = x.T @ x  # rank 8 of 96: needs damping
    return (h + h.T) / 2  # exactly symmetric, so every triangle LAPACK may read is the same


# 1e-8: float32 needs two tenfold raises of the damping (the retries, from H read back)
@pytest.mark.parametrize("damp,retries", [(0.01, 0), (1e-8, 2)])
def test_in_place_factor_is_the_textbook_one(damp, retries):
    from qcompiler.gptq_core import column_major_hessian, damped_inverse_factor

    h = _rank_deficient_hessian()
    before = h.clone()
    expected, attempts = _textbook_factor(h, damp)
    assert attempts == retries
    assert torch.equal(damped_inverse_factor(h, damp), expected)
    assert torch.equal(h, before)  # without overwrite the caller's H is left alone
    assert column_major_hessian(h).stride() == (1, 96)  # LAPACK's layout
    given_up = h.clone()
    got = damped_inverse_factor(given_up, damp, overwrite=True)
    assert torch.equal(got, expected)
    assert got.data_ptr() == given_up.data_ptr()  # factored in the caller's own storage


def test_factor_fails_cleanly_when_damping_cannot_help():
    from qcompiler.gptq_core import damped_inverse_factor

    h = -torch.eye(16)  # negative definite: no damping within 1e5x makes it PD
    with pytest.raises(ValueError, match="not positive definite"):
        damped_inverse_factor(h, 0.01, overwrite=True)


@pytest.mark.parametrize("act_order", [False, True])
def test_overwriting_the_hessian_gives_the_same_codes(act_order):
    g = torch.Generator().manual_seed(5)
    w, x = torch.randn(16, 64, generator=g), torch.randn(24, 64, generator=g)
    x[:, 7] = 0  # a dead input: unit diagonal, in the caller's buffer when it is given up
    h = x.T @ x
    h = (h + h.T) / 2
    fmt = formats.get("int4")
    kept = gptq_quantize(fmt, w, h, 32, act_order=act_order)
    given_up = h.clone()
    overwritten = gptq_quantize(fmt, w, given_up, 32, act_order=act_order,
                                overwrite_hessian=True)
    for key, value in kept.tensors().items():
        assert torch.equal(value, overwritten.tensors()[key]), key


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_in_place_permutation_equals_indexing(seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(37, 37, generator=g)
    h = h + h.T
    perm = torch.randperm(37, generator=g)
    if seed == 2:
        perm[:5] = torch.arange(5)  # fixed points
        perm[5:] = 5 + torch.randperm(32, generator=g)
    expected = h[perm][:, perm]
    storage = h.data_ptr()
    assert permute_symmetric_(h, perm) is h and h.data_ptr() == storage
    assert torch.equal(h, expected)


def test_gptq_leaves_the_hessian_alone():
    g = torch.Generator().manual_seed(4)
    w, x = torch.randn(16, 64, generator=g), torch.randn(32, 64, generator=g)
    x[:, :3] = 0  # dead columns get a unit diagonal in GPTQ's own copy only
    h = x.T @ x
    before = h.clone()
    gptq_quantize(formats.get("int4"), w, h, 32, act_order=True)
    assert torch.equal(h, before)

"""Properties every format must have, over every format and allowed group size.

Idempotence is the one other passes lean on: GPTQ and clip search replace a weight by its
fake-quantized value and lower-datatype quantizes that again; it must get the same codes, scales
and metadata back, hence the same values.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmt_helpers import CASES, DISTRIBUTIONS, allowed_values, weight_case, weights
from qcompiler import formats

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
NAMES = formats.names()


def assert_same_qtensor(a: formats.QTensor, b: formats.QTensor) -> None:
    assert a.format == b.format and a.shape == b.shape and a.group_size == b.group_size
    assert set(a.tensors()) == set(b.tensors())
    for key, t in a.tensors().items():
        u = b.tensors()[key]
        assert t.dtype == u.dtype and t.shape == u.shape, key
        same = torch.equal(t, u)
        if not same:
            bad = (t != u).nonzero()[0].tolist()
            pytest.fail(f"{a.format}: {key} differs after re-quantizing, first at {bad}: "
                        f"{t[tuple(bad)].item()} vs {u[tuple(bad)].item()}")
    assert a.opts == b.opts


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_quantize_is_idempotent(name, data):
    g, w = data.draw(weight_case(name))
    fmt = formats.get(name)
    q1 = fmt.quantize(w, group_size=g)
    w1 = fmt.dequantize(q1)
    q2 = fmt.quantize(w1, group_size=g)
    assert_same_qtensor(q1, q2)
    assert torch.equal(fmt.dequantize(q2), w1)


@pytest.mark.parametrize("name", NAMES)
def test_idempotent_on_many_groups(name):
    """Thousands of groups per distribution: the rare cases (an fp16 scale that rounds up, a
    subnormal block scale, a block exact at two exponents) show up here for certain."""
    fmt = formats.get(name)
    g = 32 if 32 in fmt.group_sizes else fmt.group_sizes[0]
    rows = [weights(7 + i, 16, 1024, dist, 1.0) for i, dist in enumerate(DISTRIBUTIONS)]
    w = torch.cat(rows)
    for search in ("clip", "rtn"):
        q1 = fmt.quantize(w, group_size=g, search=search)
        w1 = fmt.dequantize(q1)
        assert_same_qtensor(q1, fmt.quantize(w1, group_size=g, search=search))


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_rtn_is_idempotent(name, data):
    g, w = data.draw(weight_case(name))
    fmt = formats.get(name)
    q1 = fmt.quantize(w, group_size=g, search="rtn")
    w1 = fmt.dequantize(q1)
    q2 = fmt.quantize(w1, group_size=g, search="rtn")
    assert_same_qtensor(q1, q2)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_values_lie_on_codebook_times_group_scale(name, data):
    g, w = data.draw(weight_case(name))
    fmt = formats.get(name)
    q = fmt.quantize(w, group_size=g)
    n, k = q.shape
    w_hat = fmt.dequantize(q).reshape(n, k // q.group_size, q.group_size)
    assert torch.isfinite(w_hat).all()
    allowed = allowed_values(fmt, q)
    allowed = torch.where(torch.isnan(allowed), torch.inf, allowed)  # reserved codes (fp8 NaN)
    gap = (w_hat.unsqueeze(-1) - allowed.unsqueeze(-2)).abs().amin(-1)
    assert torch.equal(gap, torch.zeros_like(gap)), f"{name}: value off its group's grid"


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_quantized_tensor_layout(name, data):
    """Shapes and dtypes of docs/CONTRACTS.md, and clip search no worse than RTN."""
    g, w = data.draw(weight_case(name))
    fmt = formats.get(name)
    q = fmt.quantize(w, group_size=g)
    n, k = w.shape
    groups = k // q.group_size
    assert q.codes.dtype == torch.uint8 and q.codes.shape == (n, k * fmt.bits // 8)
    assert q.scales.shape == (n, groups)
    for part in (q.zeros, q.meta):
        assert part is None or (part.dtype == torch.uint8 and part.shape == (n, groups))
    if fmt.scale_type == "fp16":
        assert q.scales.dtype == torch.float16
    err = (fmt.dequantize(q) - w).square().sum()
    rtn = (fmt.dequantize(fmt.quantize(w, group_size=g, search="rtn")) - w).square().sum()
    assert err <= rtn * (1 + 1e-5) + 1e-30


@pytest.mark.parametrize("name,g", CASES)
def test_all_zero_groups_give_exact_zeros(name, g):
    fmt = formats.get(name)
    gs = g or 64
    w = torch.randn(3, 2 * gs)
    w[1] = 0.0
    w[2, :gs] = 0.0
    w_hat = fmt.dequantize(fmt.quantize(w, group_size=g))
    assert torch.equal(w_hat[1], torch.zeros(2 * gs))
    if g is not None:  # per-row formats share the scale along the row
        assert torch.equal(w_hat[2, :gs], torch.zeros(gs))
    assert torch.isfinite(w_hat).all()


@pytest.mark.parametrize("name", formats.names())
def test_negation_symmetric_where_the_grid_is(name):
    """Sign-symmetric formats give quantize(-w) == -quantize(w) (ties to even are symmetric)."""
    fmt = formats.get(name)
    if name.startswith("int") and name != "int8" or name in ("nf4", "razer4", "razer4-kv",
                                                           "nvfp4-razer"):
        pytest.skip("grid or special set is not symmetric in sign")
    w = torch.randn(4, 256, generator=torch.Generator().manual_seed(1))
    a = fmt.dequantize(fmt.quantize(w))
    b = fmt.dequantize(fmt.quantize(-w))
    assert torch.equal(a, -b)


@pytest.mark.parametrize("name", ["fp4", "razer4"])
@pytest.mark.parametrize("mode", ["pow2", "pow2-row"])
@SETTINGS
@given(data=st.data())
def test_power_of_two_scale_options_are_idempotent(name, mode, data):
    """ZeroQuant-FP's scale constraints: scales are powers of two (times one real scale per row)
    and re-quantizing returns the same encoding."""
    g, w = data.draw(weight_case(name))
    fmt = formats.get(name)
    q1 = fmt.quantize(w, group_size=g, scale=mode)
    w1 = fmt.dequantize(q1)
    assert_same_qtensor(q1, fmt.quantize(w1, group_size=g, scale=mode))
    if mode == "pow2":
        s = q1.scales.to(torch.float32)
        assert torch.equal(s, torch.exp2(torch.log2(s).round()) * (s > 0))

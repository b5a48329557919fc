"""The qc::linear_<format> custom ops: one per weight format, reference = dequantize + matmul."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qcompiler import formats, ops

WEIGHT_FORMATS = ops.weight_formats()


def test_one_op_per_weight_format():
    assert "razer4" in WEIGHT_FORMATS and "int4-sym" in WEIGHT_FORMATS
    for fmt in formats.names():
        registered = hasattr(torch.ops.qc, ops.op_name(fmt))
        assert registered == (formats.get(fmt).role in ("weight", "both")), fmt
    assert ops.op_name("int4-sym") == "linear_int4_sym"
    assert ops.format_of(ops.linear_op("int4-sym")) == "int4-sym"
    assert ops.format_of(torch.ops.aten.linear.default) is None


def _quantized(fmt: str, n: int = 48, k: int = 256, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    f = formats.get(fmt)
    group = f.default_group_size or k
    return f, f.quantize(w, group_size=group, search="rtn")


@pytest.mark.parametrize("fmt", WEIGHT_FORMATS)
def test_reference_is_dequantize_then_linear(fmt):
    f, q = _quantized(fmt)
    x = torch.randn(2, 5, 256)
    bias = torch.randn(48)
    parts = q.tensors()
    y = ops.linear_op(fmt)(x, *(parts.get(p) for p in ops.PARTS), bias, group_size=q.group_size,
                           n=48, k=256, layer="l", opts=ops.encode_opts(q.opts))
    expected = F.linear(x, f.dequantize(q), bias)
    assert torch.equal(y, expected)


def test_output_dtype_follows_x():
    _, q = _quantized("razer4")
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    parts = q.tensors()
    y = ops.linear_op("razer4")(x, *(parts.get(p) for p in ops.PARTS), None,
                                group_size=q.group_size, n=48, k=256, layer="l")
    assert y.dtype == torch.bfloat16 and y.shape == (3, 48)


def test_fake_implementation_traces_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    _, q = _quantized("int4")
    parts = q.tensors()
    with FakeTensorMode() as mode:
        x = torch.empty(1, 7, 256)
        fake_parts = [mode.from_tensor(parts[p]) if p in parts else None for p in ops.PARTS]
        y = ops.linear_op("int4")(x, *fake_parts, None, group_size=q.group_size, n=48, k=256,
                                  layer="l")
    assert tuple(y.shape) == (1, 7, 48)

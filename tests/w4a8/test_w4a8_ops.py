"""qc.quantize_act / qc.quantize_kv: values from the formats library, and export/save/load."""

from __future__ import annotations

import pytest
import torch

from qcompiler import act_ops, formats

GEN = torch.Generator().manual_seed(0)


def activations(*shape: int) -> torch.Tensor:
    x = torch.randn(*shape, generator=GEN)
    x[..., 3] *= 40.0  # an outlier channel, as LLM activations have
    return x


@pytest.mark.parametrize("fmt", ["fp8-e4m3", "int8"])
@pytest.mark.parametrize("granularity", ["token", "tensor"])
def test_quantize_act_is_the_formats_quantize_dequantize(fmt, granularity):
    x = activations(2, 7, 64)
    y = torch.ops.qc.quantize_act(x, format=fmt, granularity=granularity)
    f = formats.get(fmt)
    if granularity == "token":  # each token alone: the scale must not see other tokens
        expected = torch.cat([f.dequantize(f.quantize(row[None], search="rtn"))
                              for row in x.reshape(-1, 64)])
    else:
        rows = x.reshape(-1, 64)
        expected = f.dequantize(f.quantize(rows, search="rtn", granularity="tensor"))
    assert torch.equal(y, expected.reshape(x.shape))
    assert y.dtype == x.dtype and not torch.equal(y, x)


def test_quantize_act_keeps_dtype():
    x = activations(3, 64).to(torch.bfloat16)
    assert torch.ops.qc.quantize_act(x, format="fp8-e4m3").dtype == torch.bfloat16


def test_pow2_scale_is_the_smallest_power_of_two_that_does_not_clip():
    x = activations(5, 64)
    y = torch.ops.qc.quantize_act(x, format="int8", pow2_scale=True)
    amax = x.abs().amax(-1)
    exps = torch.ceil(torch.log2(amax / 127.0))
    s = torch.exp2(exps)[:, None]
    codes = y / s
    assert torch.equal(codes, codes.round()) and codes.abs().max() <= 127
    assert ((s[:, 0] / 2) < amax / 127.0).all()  # half of it would clip
    plain = torch.ops.qc.quantize_act(x, format="int8")
    assert not torch.equal(y, plain)  # the constraint really changed the scale


@pytest.mark.parametrize("fmt", ["razer4-kv", "fp4", "int4"])
def test_quantize_kv_groups_run_along_head_dim(fmt):
    k = torch.randn(1, 2, 9, 64, generator=GEN)
    y = torch.ops.qc.quantize_kv(k, format=fmt, group_size=32)
    f = formats.get(fmt)
    expected = f.dequantize(f.quantize(k.reshape(-1, 64), 32, search="rtn")).reshape(k.shape)
    assert torch.equal(y, expected)
    # a group's scale sees only its own 32 values of one token and head
    k2 = k.clone()
    k2[0, 1, 4, :32] *= 100.0
    y2 = torch.ops.qc.quantize_kv(k2, format=fmt, group_size=32)
    changed = (y2 != y).any(-1)
    assert changed.sum() == 1 and changed[0, 1, 4]
    assert torch.equal(y2[0, 1, 4, 32:], y[0, 1, 4, 32:])


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(64, 64)

    def forward(self, x):
        h = torch.ops.qc.quantize_act(x, format="fp8-e4m3", granularity="token")
        k = self.proj(h).view(x.shape[0], x.shape[1], 2, 32).transpose(1, 2)
        return torch.ops.qc.quantize_kv(k, format="razer4-kv", group_size=32)


def test_ops_export_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = Block().eval()
    x = activations(1, 6, 64)
    seq = torch.export.Dim("seq", min=2, max=64)
    ep = torch.export.export(model, (x,), dynamic_shapes=({1: seq},), strict=False)
    targets = {n.target for n in ep.graph.nodes if n.op == "call_function"}
    assert act_ops.quantize_act in targets and act_ops.quantize_kv in targets
    torch.export.save(ep, tmp_path / "block.pt2")
    loaded = torch.export.load(tmp_path / "block.pt2").module()
    longer = activations(1, 11, 64)  # another sequence length: the fake impls traced symbolically
    assert torch.equal(loaded(longer), model(longer))

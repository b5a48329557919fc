"""quantize-act and quantize-kv: where the ops go, what they change, and that programs with them
export, save, load and run through the artifact."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import qcompiler
from qcompiler import act_ops, ops, zoo
from qcompiler.capture import load_exported, save_exported
from qcompiler.errors import PassError
from qcompiler.pass_manager import run_pipeline
from qcompiler.passes_base import PassContext
from qcompiler.pipeline import parse_pipeline

IDS = torch.tensor([[1, 7, 42, 99, 3, 250, 17, 8, 64, 5, 300, 12]])


def counts(program) -> Counter:
    c: Counter = Counter()
    for n in program.graph.nodes:
        if n.op != "call_function":
            continue
        if n.target in (act_ops.quantize_act, act_ops.quantize_kv):
            c[n.target._schema.name.split("::")[-1]] += 1
        elif ops.is_quantized_linear(n.target) or n.target == torch.ops.aten.linear.default:
            c["linear"] += 1
    return c


def compiled(model: str, spec: str):
    program = zoo.load(model)
    run_pipeline(program, f"canonicalize,{spec}", PassContext())
    return program


def apply(program, spec: str):
    (p,) = parse_pipeline(spec)
    return p.apply(program, PassContext())


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_quantize_act_shares_one_op_per_input_and_skips_lm_head():
    ref = zoo.load("llama-tiny")
    program = compiled("llama-tiny", "quantize-act")
    # per layer: one for q/k/v (shared), o_proj, one for gate/up (shared), down_proj
    assert counts(program) == {"quantize_act": 8, "linear": 15}
    for n in program.linears():
        layer = str(n.args[1].target)
        quantized = n.args[0].target == act_ops.quantize_act
        assert quantized == (layer != "lm_head.weight"), layer
    err = rel(program(IDS), ref(IDS))
    assert 0 < err < 0.05  # fp8 per-token: a small but real change
    assert not apply(program, "quantize-act").modified  # idempotent


def test_quantize_act_after_lowering_feeds_quantized_linears():
    program = compiled("llama-tiny", "lower-datatype{format=fp4,search=rtn},"
                                     "quantize-act{format=int8,granularity=tensor,pow2-scale=true}")
    qnodes = [n for n in program.graph.nodes if n.target == act_ops.quantize_act]
    assert len(qnodes) == 8
    assert all(n.kwargs == {"format": "int8", "granularity": "tensor", "pow2_scale": True}
               for n in qnodes)
    users = {u.target for n in qnodes for u in n.users}
    assert users and all(ops.is_quantized_linear(t) for t in users)
    assert torch.isfinite(program(IDS)).all()


@pytest.mark.parametrize("model", ["llama-tiny", "qwen2-tiny", "mistral-tiny"])
def test_quantize_kv_marks_key_after_rope_and_value_after_projection(model):
    program = compiled(model, "quantize-kv{format=razer4}")
    kv = [n for n in program.graph.nodes if n.target == act_ops.quantize_kv]
    assert len(kv) == 4  # k and v of 2 layers
    for n in kv:
        layer = n.kwargs["layer"]
        assert n.kwargs["format"] == "razer4-kv" and n.kwargs["group_size"] == 32
        src = n.args[0]
        assert tuple(src.meta["val"].shape)[1::2] == (2, 32)  # [1, kv_heads=2, S, head_dim=32]
        if layer.endswith("k_proj"):
            assert src.target == torch.ops.aten.add.Tensor  # RoPE: q*cos + rotate(q)*sin
        else:
            assert layer.endswith("v_proj") and src.target == torch.ops.aten.transpose.int
        # the cached tensor is read only through the quantized copy (before repeat_kv)
        assert list(src.users) == [n]


def test_quantize_kv_error_is_bounded_and_shrinks_with_group_size():
    ref = zoo.load("llama-tiny")(IDS)
    errors = {}
    for fmt in ("int4", "fp4"):
        for g in (16, 32):
            errors[fmt, g] = rel(compiled("llama-tiny", f"quantize-kv{{format={fmt},group-size={g}}}")(IDS), ref)
    razer = rel(compiled("llama-tiny", "quantize-kv")(IDS), ref)
    print({**{f"{f}-g{g}": round(e, 5) for (f, g), e in errors.items()}, "razer4-g32": razer})
    assert all(0 < e < 0.2 for e in [*errors.values(), razer])
    assert errors["int4", 16] < errors["int4", 32] and errors["fp4", 16] < errors["fp4", 32]


@pytest.mark.parametrize("model, message", [
    ("phi3-tiny", "uses a fused QKV projection (model.layers.0.self_attn.qkv_proj)"),
    ("bert-tiny", "this is an encoder model: it has no KV cache"),
])
def test_quantize_kv_unsupported_architectures(model, message):
    program = zoo.load(model)
    with pytest.raises(PassError) as info:
        apply(program, "quantize-kv")
    text = str(info.value)
    assert message in text and "\n" not in text


def test_quantize_kv_group_size_must_fit_head_dim():
    with pytest.raises(PassError, match="group size 64 does not fit head_dim=32 for int4"):
        apply(zoo.load("llama-tiny"), "quantize-kv{format=int4,group-size=64}")


def test_quantize_kv_small_head_dim():
    # stories260k: head_dim 8, below every fp4/int4 group; razer4-kv has groups of 8
    program = zoo.load("stories260k")
    ids = torch.randint(3, 512, (1, 16), generator=torch.Generator().manual_seed(0))
    ref = program(ids)
    with pytest.raises(PassError, match=r"head_dim=8 is not a multiple of any group size fp4 "
                       r"supports \(16, 32, 64, 128, 256\); format=razer4 has groups of 8"):
        apply(zoo.load("stories260k"), "quantize-kv{format=fp4}")
    apply(program, "quantize-kv{format=razer4}")
    sites = [n for n in program.graph.nodes if n.target == act_ops.quantize_kv]
    assert sites and all(n.kwargs["group_size"] == 8 for n in sites)
    assert 0 < rel(program(ids), ref) < 0.5


def test_w4a8_kv4_program_saves_loads_and_runs_through_the_artifact(tmp_path):
    spec = ("canonicalize,lower-datatype{format=fp4,search=rtn},quantize-kv{format=razer4},"
            "quantize-act,dce")
    program = compiled("llama-tiny", spec.removeprefix("canonicalize,"))
    c = counts(program)
    assert c["quantize_act"] == 8 and c["quantize_kv"] == 4
    save_exported(program, tmp_path / "p.pt2")
    again = load_exported(tmp_path / "p.pt2")
    assert counts(again) == c
    assert torch.equal(again(IDS), program(IDS))
    result = qcompiler.compile("zoo:llama-tiny", out=tmp_path / "art", quiet=True, pipeline=spec)
    loaded = qcompiler.load(tmp_path / "art")
    assert torch.equal(loaded(IDS), result.program(IDS))

"""lower-datatype: which linears become qc.linear_<format>, with what attributes and errors."""

from __future__ import annotations

import io
from collections import Counter

import pytest
import torch

from qcompiler import formats, ops, zoo
from qcompiler.capture import capture_module
from qcompiler.errors import PassError, QCompilerError, UsageError
from qcompiler.ir import print_program
from qcompiler.pass_manager import run_pipeline
from qcompiler.passes_base import PassContext
from qcompiler.pipeline import parse_pipeline

IDS = torch.tensor([[1, 7, 42, 99, 3, 250, 17, 8, 64]])


def op_counts(program) -> Counter:
    counts: Counter = Counter()
    for node in program.graph.nodes:
        if node.op == "call_function":
            fmt = ops.format_of(node.target)
            if fmt is not None:
                counts[f"qc.linear_{fmt}"] += 1
            elif node.target is torch.ops.aten.linear.default:
                counts["aten.linear"] += 1
    return counts


def lower(model: str, spec: str, ctx: PassContext | None = None):
    program = zoo.load(model)
    run_pipeline(program, f"canonicalize,{spec},dce", ctx)
    return program


def apply(program, spec: str, ctx: PassContext | None = None):
    """Run one pass without the pass manager (errors stay PassErrors; no reproducer written)."""
    (p,) = parse_pipeline(spec)
    p.apply(program, ctx or PassContext())
    return program


def test_llama_razer4_structure_ir_and_report():
    ctx = PassContext()
    program = lower("llama-tiny", "lower-datatype{format=razer4}", ctx)
    assert op_counts(program) == {"qc.linear_razer4": 14, "aten.linear": 1}  # lm_head kept
    ir = print_program(program)
    assert ("qc.linear_razer4(" in ir and '{group_size = 128, n = 128, k = 256, '
            'layer = "model.layers.0.mlp.down_proj"}' in ir)
    assert 'qc.param "model.layers.0.mlp.down_proj.codes" : tensor<128x128xui8>' in ir
    assert 'qc.param "model.layers.0.mlp.down_proj.meta" : tensor<128x2xui8>' in ir
    tensors = program.tensors()
    assert "model.layers.0.mlp.down_proj.weight" not in tensors  # the fp weight is gone
    assert "lm_head.weight" in tensors
    stats = ctx.report["passes"][1]["stats"]
    assert stats == {"layers-quantized": 14, "layers-skipped": 1}
    layers = {entry["name"]: entry for entry in ctx.report["layers"]}
    assert layers["lm_head"]["status"] == "skipped"
    down = layers["model.layers.0.mlp.down_proj"]
    assert (down["format"], down["group_size"], down["n"], down["k"]) == ("razer4", 128, 128, 256)
    assert 0 < down["rel_error"] < 0.02


@pytest.mark.parametrize("fmt", ops.weight_formats())
def test_every_weight_format_lowers_and_runs(fmt):
    reference = zoo.load("llama-tiny")(IDS)
    program = lower("llama-tiny", f"lower-datatype{{format={fmt},search=rtn}}")
    assert op_counts(program) == {f"qc.linear_{fmt}": 14, "aten.linear": 1}
    out = program(IDS)
    assert torch.isfinite(out).all()
    rel = float((out - reference).norm() / reference.norm())
    if formats.get(fmt).bits > 2:  # 2-bit RTN is too coarse for a bound that means anything
        assert rel < 0.5, rel


def test_skip_and_override_select_layers():
    program = lower("llama-tiny", "lower-datatype{format=razer4,skip=,search=rtn}")
    assert op_counts(program) == {"qc.linear_razer4": 15}
    program = lower("llama-tiny", "lower-datatype{format=int4,skip=lm_head,*self_attn*}")
    assert op_counts(program) == {"qc.linear_int4": 6, "aten.linear": 9}
    spec = ("lower-datatype{format=razer4,search=rtn,override=layers.*.mlp.down_proj:format=int8;"
            "layers.0.self_attn.*:format=nf4:group-size=32;layers.1.mlp.up_proj:skip}")
    program = lower("llama-tiny", spec)
    assert op_counts(program) == {"qc.linear_razer4": 7, "qc.linear_int8": 2,
                                  "qc.linear_nf4": 4, "aten.linear": 2}
    groups = {n.kwargs["layer"]: n.kwargs["group_size"] for n in program.graph.nodes
              if n.op == "call_function" and ops.format_of(n.target)}
    assert groups["model.layers.0.self_attn.q_proj"] == 32
    assert groups["model.layers.0.mlp.down_proj"] == 256  # int8: one group per row


def test_pipeline_string_round_trips():
    spec = "lower-datatype{format=razer4,group-size=64,override=layers.*.mlp.down_proj:int8}"
    (p,) = parse_pipeline(spec)
    assert str(p) == spec and p.group_size == 64
    assert parse_pipeline(p.canonical())[0] == p


@pytest.mark.parametrize("spec, message", [
    ("lower-datatype{override=nocolon}", "must be PATTERN:format=F"),
    ("lower-datatype{override=a:bits=4}", "unknown key 'bits'"),
    ("lower-datatype{on-indivisible=maybe}", "expects one of error|skip|pad"),
])
def test_bad_options_are_usage_errors(spec, message):
    with pytest.raises(UsageError, match=message):
        parse_pipeline(spec)


class Indivisible(torch.nn.Module):
    """K = 96: group size 64 does not divide it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(96, 64)
        self.b = torch.nn.Linear(64, 32, bias=False)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def small_program():
    return capture_module(Indivisible(), (torch.randn(1, 4, 96),), dynamic_seq=False)


def test_indivisible_k_is_an_error_naming_the_fix():
    with pytest.raises(PassError) as info:
        apply(small_program(), "lower-datatype{format=int4,group-size=64}")
    assert str(info.value) == (
        "lower-datatype: group size 64 does not divide K=96 in a; use --group-size 16 or 32, "
        "or --on-indivisible pad (lower-datatype{on-indivisible=pad}) to zero-pad K (exact) or "
        "--on-indivisible skip to keep such layers in fp")


def test_indivisible_skip_and_pad():
    ctx = PassContext()
    program = run_pipeline(small_program(),
                           "lower-datatype{format=int4,group-size=64,on-indivisible=skip}", ctx)
    assert op_counts(program) == {"qc.linear_int4": 1, "aten.linear": 1}
    skipped = [e for e in ctx.report["layers"] if e["status"] == "skipped"]
    assert skipped == [{"name": "a", "n": 64, "k": 96, "status": "skipped",
                        "reason": "group size 64 does not divide K=96"}]

    x = torch.randn(1, 4, 96)
    padded = run_pipeline(small_program(),
                          "lower-datatype{format=int4,group-size=64,on-indivisible=pad}")
    assert op_counts(padded) == {"qc.linear_int4": 2}
    assert "aten.constant_pad_nd" in print_program(padded)
    exact = small_program()  # same weights, quantized on a zero-padded K by hand
    from qcompiler import formats

    w = torch.nn.functional.pad(exact.get_tensor("a.weight"), (0, 32))
    fmt = formats.get("int4")
    w_hat = fmt.dequantize(fmt.quantize(w, group_size=64))[:, :96]
    h = torch.relu(torch.nn.functional.linear(x, w_hat, exact.get_tensor("a.bias")))
    b = fmt.dequantize(fmt.quantize(exact.get_tensor("b.weight"), group_size=64))
    torch.testing.assert_close(padded(x), torch.nn.functional.linear(h, b))


def test_stories260k_intermediate_172_needs_skip():
    with pytest.raises(PassError, match=r"does not divide K=172 in model.layers.0.mlp.down_proj; "
                                   r"no supported group size divides it: use "
                                   r"--on-indivisible pad \(lower-datatype\{on-indivisible=pad"
                                   r"\}\) to zero-pad K"):
        apply(zoo.load("stories260k"), "lower-datatype{format=razer4,group-size=32}")
    ctx = PassContext()
    program = lower("stories260k", "lower-datatype{format=razer4,group-size=32,search=rtn,"
                                   "on-indivisible=skip}", ctx)
    assert op_counts(program) == {"qc.linear_razer4": 30, "aten.linear": 6}
    assert torch.isfinite(program(IDS)).all()


def test_nan_weight_is_reported():
    program = zoo.load("llama-tiny")
    w = program.get_tensor("model.layers.1.mlp.up_proj.weight").clone()
    w[3, 5] = float("nan")
    program.set_tensor("model.layers.1.mlp.up_proj.weight", w)
    with pytest.raises(PassError, match=r"the weight of model.layers.1.mlp.up_proj has 1 "
                                   r"NaN/Inf value\(s\)"):
        apply(program, "lower-datatype{format=int4}")


@pytest.mark.parametrize("spec, message", [
    ("lower-datatype{format=razer4-kv}", "'razer4-kv' is an activation format"),
    ("lower-datatype{format=razer5}", "unknown format 'razer5'"),
    ("lower-datatype{format=int4,group-size=48}", "does not support group size 48"),
])
def test_format_errors(spec, message):
    with pytest.raises(PassError, match=message):
        apply(zoo.load("llama-tiny"), spec)


def test_pass_manager_names_the_failing_pass(tmp_path):
    with pytest.raises(QCompilerError, match=r"^lower-datatype: .* \(pass lower-datatype failed "
                                             r"as the first pass; replay with: qc-opt"):
        run_pipeline(small_program(), "lower-datatype{format=int4,group-size=64}",
                     reproducer_dir=tmp_path)


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool])
def test_non_float_weights_are_kept_and_warned_about(dtype):
    program = small_program()
    program.set_tensor("b.weight", torch.ones(32, 64, dtype=dtype))
    stream = io.StringIO()
    ctx = PassContext(stream=stream)
    apply(program, "lower-datatype{format=int4,group-size=32}", ctx)
    assert op_counts(program) == {"qc.linear_int4": 1, "aten.linear": 1}
    assert program.get_tensor("b.weight").dtype == dtype  # untouched, not converted
    name = str(dtype).removeprefix("torch.")
    row = next(e for e in ctx.report["layers"] if e["name"] == "b")
    assert row["status"] == "skipped" and row["reason"] == f"{name} weight, not floating point"
    assert stream.getvalue() == (f"warning: lower-datatype: 1 weight(s) kept in floating point: "
                                 f"b ({name} weight, not floating point) (all are listed in "
                                 "the report)\n")


class BatchedExperts(torch.nn.Module):
    """A weight reached through bmm (as transformers' batched_mm experts do): not a linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(64, 64)
        self.experts = torch.nn.Parameter(torch.randn(2, 64, 32))

    def forward(self, x):
        h = self.proj(x).expand(2, -1, -1)
        return torch.bmm(h, self.experts)


def test_matmul_weights_that_are_not_linears_are_reported():
    program = capture_module(BatchedExperts(), (torch.randn(1, 4, 64),), dynamic_seq=False)
    stream = io.StringIO()
    ctx = PassContext(stream=stream)
    apply(program, "lower-datatype{format=int4,group-size=32}", ctx)
    assert op_counts(program) == {"qc.linear_int4": 1}
    row = ctx.report["layers"][-1]
    assert row["name"] == "experts" and row["status"] == "skipped" and row["shape"] == [2, 64, 32]
    assert (row["n"], row["k"]) == (128, 32)  # rows x last dim, as the layer table counts
    assert row["reason"].startswith("read by aten.bmm (%bmm")
    assert stream.getvalue().startswith("warning: lower-datatype: 1 weight(s) kept in floating "
                                        "point: experts (read by aten.bmm (%bmm")


def test_layers_skipped_by_pattern_are_a_note_not_a_warning():
    stream = io.StringIO()
    ctx = PassContext(stream=stream, verbose=1)
    lower("llama-tiny", "lower-datatype{format=int4}", ctx)
    assert stream.getvalue() == ("note: lower-datatype: kept in floating point as asked "
                                 "(skip/override): lm_head\n")


def test_artifact_lists_a_weight_kept_behind_bmm(tmp_path):
    import json

    import qcompiler

    out = tmp_path / "out"
    qcompiler.compile(BatchedExperts(), format="int4", group_size=32, out=out, quiet=True,
                      example_inputs=(torch.randn(1, 4, 64),))
    layers = {r["name"]: r for r in json.loads((out / "manifest.json").read_text())["layers"]}
    assert layers["experts"]["format"] == "fp" and layers["proj"]["format"] == "int4"
    assert layers["experts"]["reason"].startswith("read by aten.bmm")

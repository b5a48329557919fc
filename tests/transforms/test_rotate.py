"""rotate: an orthogonal rotation of the residual stream folded into the weights (QuaRot).

Claims checked: the function is unchanged (1e-4 relative, fp32), the weights really change, an
injected outlier channel is spread out, 4-bit quantization after rotating is more accurate on a
model with outlier channels, and unsupported architectures fail with one line.
"""

from __future__ import annotations

import pytest
import torch

from qcompiler import zoo
from qcompiler.errors import PassError
from qcompiler.graph_norms import find_norms, norm_consumers
from qcompiler.hadamard import hadamard
from qcompiler.hadamard_op import hadamard_transform
from qcompiler.pass_manager import run_pipeline
from qcompiler.passes_base import PassContext
from qcompiler.pipeline import parse_pipeline
from qcompiler.residual_stream import find_residual_stream

IDS = torch.tensor([[1, 7, 42, 99, 3, 250, 17, 8, 64, 300, 11, 5]])
Q_PROJ = "model.layers.0.self_attn.q_proj.weight"


def load(model: str, fold: bool = True):
    """The zoo model with random norm weights (so fold-norms matters), folded if asked."""
    program = zoo.load(model)
    run_pipeline(program, "canonicalize")
    gen = torch.Generator().manual_seed(0)
    for norm in find_norms(program):
        t = program.get_tensor(str(norm.weight.target))
        program.set_tensor(str(norm.weight.target), 1 + 0.5 * torch.randn(t.shape, generator=gen))
    if fold:
        apply(program, "fold-norms")
    return program


def apply(program, spec: str, ctx: PassContext | None = None):
    (p,) = parse_pipeline(spec)
    return p.apply(program, ctx or PassContext())


def rel(y, ref) -> float:
    return float((y - ref).abs().max() / ref.abs().max())


def peakiness(w: torch.Tensor) -> float:
    """max|w| / rms(w): large when a few entries (an outlier channel) dominate."""
    return float(w.abs().max() / w.pow(2).mean().sqrt())


@pytest.mark.parametrize("model", ["llama-tiny", "qwen2-tiny", "mistral-tiny", "phi3-tiny"])
@pytest.mark.parametrize("kind", ["hadamard", "random"])
def test_rotation_keeps_the_function_and_changes_the_weights(model, kind):
    program = load(model)
    ref = program(IDS)
    before = {name: t.clone() for name, t in program.tensors().items()}
    result = apply(program, f"rotate{{kind={kind},seed=1}}")
    assert result.modified
    assert rel(program(IDS), ref) < 1e-4
    after = program.tensors()
    changed = [n for n, t in before.items() if t.dim() == 2 and
               float((after[n] - t).norm() / t.norm()) > 0.5]
    n_linears = len(list(program.linears()))
    assert len(changed) == n_linears + 1  # every linear and the embedding table
    assert result.stats["layers-changed"] == n_linears  # readers (lm_head too) and writers


def test_online_down_inserts_a_hadamard_op_and_still_exports():
    program = load("llama-tiny")
    ref = program(IDS)
    result = apply(program, "rotate{online-down=true}")
    assert result.stats["online-hadamards"] == 2
    hadamards = [n for n in program.graph.nodes if n.target is torch.ops.qc.hadamard.default]
    assert len(hadamards) == 2
    for node in hadamards:
        (user,) = node.users
        assert str(user.args[1].target).endswith("mlp.down_proj.weight")
    assert rel(program(IDS), ref) < 1e-4
    exported = program.export()
    assert rel(exported.module()(IDS), ref) < 1e-4


def test_seed_selects_the_rotation():
    a, b, c = load("llama-tiny"), load("llama-tiny"), load("llama-tiny")
    apply(a, "rotate{seed=1}")
    apply(b, "rotate{seed=1}")
    apply(c, "rotate{seed=2}")
    assert torch.equal(a.get_tensor(Q_PROJ), b.get_tensor(Q_PROJ))
    assert not torch.allclose(a.get_tensor(Q_PROJ), c.get_tensor(Q_PROJ), atol=1e-3)


def inject_outlier_channels(program, channels: list[int], factor: float) -> None:
    """Scale input columns of every norm-reading linear but lm_head (a new model, not exact)."""
    stream = find_residual_stream(program)
    for norm in stream.readers:
        for linear in norm_consumers(norm)[0]:
            if linear is stream.lm_head:
                continue
            name = str(linear.args[1].target)
            w = program.get_tensor(name).clone()
            w[:, channels] *= factor
            program.set_tensor(name, w)


def test_rotation_spreads_an_outlier_channel():
    program = load("llama-tiny")
    inject_outlier_channels(program, [5], 30.0)
    ref = program(IDS)
    peak_before = peakiness(program.get_tensor(Q_PROJ))
    apply(program, "rotate")
    peak_after = peakiness(program.get_tensor(Q_PROJ))
    assert peak_before > 10 and peak_after < peak_before / 3
    assert rel(program(IDS), ref) < 1e-4


def kl(ref_logits: torch.Tensor, logits: torch.Tensor) -> float:
    p, q = ref_logits.log_softmax(-1), logits.log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_rotation_lowers_int4_error_with_outlier_channels():
    ids = torch.randint(0, 512, (1, 64), generator=torch.Generator().manual_seed(0))
    program = load("llama-tiny")
    inject_outlier_channels(program, [5, 77], 10.0)
    ref = program(ids)
    plain, rotated = program.clone(), program.clone()
    run_pipeline(plain, "lower-datatype{format=int4,search=rtn}")
    run_pipeline(rotated, "rotate,lower-datatype{format=int4,search=rtn}")
    kl_plain, kl_rotated = kl(ref, plain(ids)), kl(ref, rotated(ids))
    assert kl_rotated < kl_plain / 2, (kl_plain, kl_rotated)


@pytest.mark.parametrize("model, spec, message", [
    ("gpt2-tiny", "rotate", "rotate: transformer.h.0.ln_1 is a LayerNorm, whose mean "
     "subtraction does not commute with a rotation; rotate supports pre-norm RMSNorm decoders "
     "(Llama, Qwen2, Mistral)"),
    ("opt-tiny", "rotate", "rotate: model.decoder.layers.0.self_attn_layer_norm is a LayerNorm"),
    ("bert-tiny", "rotate", "rotate: embeddings.LayerNorm is a LayerNorm"),
    ("stories260k", "rotate{online-down=true}", "rotate: online-down needs a Hadamard matrix of "
     "order 172 (the input size of model.layers.0.mlp.down_proj), which is not known; use "
     "online-down=false"),
])
def test_unsupported_programs_fail_with_one_line(model, spec, message):
    program = zoo.load(model)
    run_pipeline(program, "canonicalize,fold-norms")
    with pytest.raises(PassError) as err:
        apply(program, spec)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_unfolded_norms_ask_for_fold_norms_first():
    program = load("llama-tiny", fold=False)
    before = program.get_tensor(Q_PROJ).clone()
    with pytest.raises(PassError, match=r"^rotate: model\.layers\.0\.input_layernorm has a "
                       r"non-unit weight, which does not commute with a rotation; put "
                       r"fold-norms first \(-p 'fold-norms,rotate'\)$"):
        apply(program, "rotate")
    assert torch.equal(program.get_tensor(Q_PROJ), before)  # checked before anything changed


def test_hadamard_op_matches_its_matrix():
    x = torch.randn(3, 5, 256, generator=torch.Generator().manual_seed(0))
    y = hadamard_transform(x)
    torch.testing.assert_close(y, (x.double() @ hadamard(256)).float())
    torch.testing.assert_close(hadamard_transform(y), x, rtol=1e-5, atol=1e-5)  # H = Hᵀ = H⁻¹


def test_gemma_rotates_after_folding_its_one_plus_w_norms():
    """Gemma: (1 + w) norms folded to w = 0, embeddings scaled by √hidden (a scalar, which
    commutes with Q), tied LM head untied by fold-norms; the function is unchanged."""
    program = load("gemma-tiny")
    ref = program(IDS)
    before = program.get_tensor(Q_PROJ).clone()
    result = apply(program, "rotate")
    assert result.stats["layers-changed"] == 2 * (3 + 2) + 2 * 2 + 1  # readers + writers
    assert not torch.allclose(program.get_tensor(Q_PROJ), before)
    assert rel(program(IDS), ref) < 1e-4


@pytest.mark.parametrize("model", ["stories260k", "gemma-tiny"])
def test_rotate_before_canonicalize_names_the_missing_step(model):
    """Tied-embedding models used to fail with "no LM head", the wrong cause."""
    program = zoo.load(model)
    with pytest.raises(PassError, match=r"^rotate: run canonicalize first "
                                        r"\(-p 'canonicalize,fold-norms,rotate'\)"):
        apply(program, "rotate")


@pytest.mark.parametrize("model", ["mixtral-tiny", "qwen3-moe-tiny"])
def test_moe_experts_are_rotated_as_readers_and_weighted_writers(model):
    """A dense MoE block (qcompiler/moe.py) writes Σ_e r_e · down_e(...) into the stream: each
    expert's down projection is a writer, the router and gate_up projections are readers."""
    program = load(model)  # fold-norms folds the stream's norms: routers, experts are linears
    readers = find_residual_stream(program).readers  # (Qwen3's q/k norms are per head: kept)
    assert len(readers) == 5 and all(
        bool((program.get_tensor(str(n.weight.target)) == 1).all()) for n in readers)
    ref = program(IDS)
    before = {name: t.clone() for name, t in program.tensors().items()}
    result = apply(program, "rotate{kind=hadamard,seed=1}")
    assert rel(program(IDS), ref) < 1e-4
    n_linears = len(list(program.linears()))
    assert result.stats["layers-changed"] == n_linears
    after = program.tensors()
    changed = [n for n, t in before.items() if t.dim() == 2 and
               float((after[n] - t).norm() / t.norm()) > 0.5]
    assert "model.layers.1.mlp.experts.3.down_proj.weight" in changed
    assert "model.layers.1.mlp.gate.weight" in changed
    assert len(changed) == n_linears + 1  # every linear and the embedding table

"""fold-norms: γ/β move into the linears reading each norm, the function is unchanged.

Zoo models start with γ = 1 and β = 0 (HF init), where folding is a no-op, so every numerical
test first gives the norms random γ/β and checks that this perturbation matters.
"""

from __future__ import annotations

import io
import re

import pytest
import torch

from qcompiler import zoo
from qcompiler.errors import PassError
from qcompiler.graph_norms import find_norms, norm_consumers
from qcompiler.pass_manager import run_pipeline
from qcompiler.passes_base import PassContext
from qcompiler.pipeline import parse_pipeline

IDS = torch.tensor([[1, 7, 42, 99, 3, 250, 17, 8, 64, 300, 11, 5]])


def load(model: str):
    program = zoo.load(model)
    run_pipeline(program, "canonicalize")
    return program


def perturb_norms(program, seed: int = 0) -> None:
    """Random γ = 1 + 0.5·N(0,1) and β = 0.3·N(0,1) on every norm (new tensors)."""
    gen = torch.Generator().manual_seed(seed)
    for norm in find_norms(program):
        for attr, scale, base in ((norm.weight, 0.5, 1.0), (norm.bias, 0.3, 0.0)):
            if attr is not None:
                t = program.get_tensor(str(attr.target))
                program.set_tensor(str(attr.target),
                                   base + scale * torch.randn(t.shape, generator=gen))


def apply(program, spec: str, ctx: PassContext | None = None):
    (p,) = parse_pipeline(spec)
    return p.apply(program, ctx or PassContext())


def rel(y, ref) -> float:
    return float((y - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("model", ["llama-tiny", "qwen2-tiny", "mistral-tiny", "phi3-tiny",
                                   "gpt2-tiny", "opt-tiny"])
def test_folding_keeps_the_function(model):
    program = load(model)
    perturb_norms(program)
    ref = program(IDS)
    unit = program.clone()
    for norm in find_norms(unit):  # the same model with the norms' γ/β simply dropped
        for attr, fill in ((norm.weight, 1.0), (norm.bias, 0.0)):
            if attr is not None:
                t = unit.get_tensor(str(attr.target))
                unit.set_tensor(str(attr.target), torch.full_like(t, fill))
    assert rel(unit(IDS), ref) > 1e-2  # the perturbation matters: folding has work to do

    result = apply(program, "fold-norms")
    assert result.modified
    assert result.stats["norms-folded"] == len(find_norms(program)) == 5
    assert result.stats["norms-kept"] == 0
    assert rel(program(IDS), ref) < 1e-4
    for norm in find_norms(program):
        assert bool((program.get_tensor(str(norm.weight.target)) == 1).all())
        if norm.bias is not None:
            assert bool((program.get_tensor(str(norm.bias.target)) == 0).all())
    assert not apply(program, "fold-norms").modified  # idempotent


def test_qkv_share_one_norm_and_are_scaled_by_its_weight():
    program = load("llama-tiny")
    perturb_norms(program)
    norm = find_norms(program)[0]
    gamma = program.get_tensor(str(norm.weight.target)).clone()
    linears, others = norm_consumers(norm)
    assert len(linears) == 3 and not others
    before = {str(lin.args[1].target): program.get_tensor(str(lin.args[1].target)).clone()
              for lin in linears}
    apply(program, "fold-norms")
    for name, w in before.items():
        assert name.split(".")[-2] in ("q_proj", "k_proj", "v_proj")
        torch.testing.assert_close(program.get_tensor(name), w * gamma[None, :])


def test_tied_lm_head_is_untied_and_layernorm_bias_becomes_a_linear_bias():
    program = load("gpt2-tiny")
    perturb_norms(program)
    table = program.get_tensor("lm_head.weight").clone()
    final = find_norms(program)[-1]
    gamma = program.get_tensor(str(final.weight.target)).clone()
    beta = program.get_tensor(str(final.bias.target)).clone()
    ref = program(IDS)
    apply(program, "fold-norms")
    embedding = next(program.nodes("call_function", torch.ops.aten.embedding.default))
    assert embedding.args[0].target == "transformer.wte.weight"
    torch.testing.assert_close(program.get_tensor("transformer.wte.weight"), table)
    (lm_head,) = norm_consumers(find_norms(program)[-1])[0]
    assert lm_head.args[1].target == "lm_head.weight"
    torch.testing.assert_close(program.get_tensor("lm_head.weight"), table * gamma[None, :])
    torch.testing.assert_close(program.get_tensor(str(lm_head.args[2].target)), table @ beta,
                               rtol=1e-5, atol=1e-5)
    assert rel(program(IDS), ref) < 1e-4


def test_post_norm_model_keeps_its_norms_and_says_why():
    program = load("bert-tiny")
    perturb_norms(program)
    ref = program(IDS)
    stream = io.StringIO()
    result = apply(program, "fold-norms", PassContext(verbose=1, stream=stream))
    assert not result.modified
    assert result.stats == {"norms-folded": 0, "norms-kept": 5, "layers-changed": 0}
    notes = stream.getvalue()
    assert re.search(r"note: fold-norms: kept embeddings\.LayerNorm: its output also feeds add "
                     r"\(%add(_\d+)?\) \(post-norm residual\)", notes), notes
    assert torch.equal(program(IDS), ref)


def test_real_checkpoint_through_the_pass_manager():
    program = zoo.load("stories260k")  # trained γ, tied embedding/lm_head
    ref = program(IDS)
    ctx = PassContext()
    run_pipeline(program, "canonicalize,fold-norms", ctx)
    assert ctx.report["passes"][-1]["stats"]["norms-folded"] == 11
    assert rel(program(IDS), ref) < 1e-4
    assert "model.embed_tokens.weight" in program.tensors()


def test_gemma_one_plus_w_norms_fold_exactly():
    """Gemma's RMSNorm scales by (1 + w): folded into the linears (the tied LM head untied),
    leaving w = 0, so the scale is exactly 1; the function is unchanged to 1e-5 (fp32)."""
    program = load("gemma-tiny")
    norms = find_norms(program)
    assert len(norms) == 5 and all(n.offset == 1 for n in norms)
    assert all(len(norm_consumers(n)[0]) in (1, 2, 3) and not norm_consumers(n)[1]
               for n in norms)
    gen = torch.Generator().manual_seed(0)
    for norm in norms:  # HF initializes w = 0 (scale 1): give the norms work to do
        t = program.get_tensor(str(norm.weight.target))
        program.set_tensor(str(norm.weight.target), 0.5 * torch.randn(t.shape, generator=gen))
    ref = program(IDS)
    unit = program.clone()
    for norm in find_norms(unit):
        unit.set_tensor(str(norm.weight.target), torch.zeros(128))
    assert rel(unit(IDS), ref) > 1e-2  # the perturbation matters

    result = apply(program, "fold-norms")
    assert result.stats["norms-folded"] == 5
    assert rel(program(IDS), ref) < 1e-5
    for norm in find_norms(program):
        assert norm.offset == 1
        assert bool((program.get_tensor(str(norm.weight.target)) == 0).all())  # 1 + w = 1
    assert not apply(program, "fold-norms").modified  # idempotent


@pytest.mark.parametrize("model", ["stories260k", "gemma-tiny"])
def test_fold_norms_before_canonicalize_names_the_missing_step(model):
    program = zoo.load(model)  # not canonicalized: casts and asserts hide the norms' linears
    with pytest.raises(PassError, match=r"^fold-norms: run canonicalize first "
                                        r"\(-p 'canonicalize,fold-norms'\): the graph still has "
                                        r"ops that canonicalize removes \(%"):
        apply(program, "fold-norms")

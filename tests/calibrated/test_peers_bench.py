"""bench/peers.py's pieces that need no peer venv: the padded checkpoint, the one evaluator's
weight extraction, and the verdict rule (a gap inside the seed spread is a tie)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import peers  # noqa: E402
import peers_setup  # noqa: E402


def test_padding_the_mlp_keeps_every_logit():
    from qcompiler import zoo

    hf = zoo.build_module("stories260k")
    padded = peers_setup.pad_mlp(hf, 192)
    assert padded.config.intermediate_size == 192
    assert padded.model.layers[0].mlp.down_proj.weight.shape[1] == 192
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, hf.config.vocab_size, (2, 24), generator=gen)
    with torch.no_grad():
        want, got = hf(ids).logits, padded(ids).logits
    assert torch.allclose(want, got, rtol=0, atol=1e-5)  # zero rows/columns: same sums


def test_dequantized_weights_are_what_the_program_computes_with():
    from qcompiler import zoo
    from qcompiler.driver import compile

    reference = zoo.load("llama-tiny")
    spec = "canonicalize,dce,lower-datatype{format=int4-sym,group-size=32,search=rtn},dce"
    program = compile(zoo.load("llama-tiny"), pipeline=spec, quiet=True).program
    weights = peers.dequantized_weights(program)
    assert len(weights) == sum(1 for _ in reference.linears()) - 1  # lm_head stays fp
    swapped = reference.clone()
    for name, w in weights.items():
        swapped.set_tensor(name, w)
    ids = reference.example_inputs[0]
    assert torch.allclose(swapped(ids), program(ids), rtol=0, atol=1e-4)


def _row(side, method, kls):
    return [{"model": "m", "group": 32, "side": side, "method": method, "kl": k, "top1": 0.5}
            for k in kls]


def test_verdicts_call_a_gap_inside_the_seed_spread_a_tie():
    rows = (_row("qcompiler", "gptq (matched)", [1.00, 1.10]) +
            _row("qcompiler", "gptq (default)", [0.50, 0.52]) +
            _row("llm-compressor", "gptq (matched)", [1.02, 1.04]))
    lines = peers.verdicts(peers.summarize(rows))
    assert "ours gptq (matched) vs theirs gptq" in lines[0] and "tie" in lines[0]
    assert lines[1].endswith("better")

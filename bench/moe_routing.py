"""MoE experts dense vs routed at run time on the CPU (qcompiler/routed_experts.py).

    python bench/moe_routing.py            # -> bench/results/moe_routing.md

A random-init Qwen3-MoE checkpoint with many experts and a small top-k (the shape of the real
ones: Qwen3-30B-A3B routes 8 of 128, 16x fewer expert FLOPs than dense) is compiled to razer4
and loaded; the stored graph (every expert on every token) and the runtime's routed graph run
the same prefill, and `generate` runs with the routed decode program and with
QC_ROUTED_EXPERTS=0. Reported: medians of repeated runs in this process and their ratio (the
machine may be shared: the ratio is the number), and the largest logit difference.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import row_machine

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "moe_routing.md"
SHAPE = dict(hidden_size=512, moe_intermediate_size=256, num_experts=32, num_experts_per_tok=4,
             num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, vocab_size=2048)
PREFILL, NEW_TOKENS, REPEATS = 256, 32, 5


def build(directory: Path) -> None:
    import transformers

    cfg = transformers.Qwen3MoeConfig(intermediate_size=1024, max_position_embeddings=1024,
                                      tie_word_embeddings=False, use_cache=False,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                      architectures=["Qwen3MoeForCausalLM"], **SHAPE)
    torch.manual_seed(0)
    transformers.Qwen3MoeForCausalLM(cfg).save_pretrained(directory)


def median_seconds(fn, repeats: int = REPEATS) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    import qcompiler
    from qcompiler.routed_experts import routed_copy

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp) / "hf")
        qcompiler.compile(Path(tmp) / "hf", format="razer4", out=Path(tmp) / "a", quiet=True)
        model = qcompiler.load(Path(tmp) / "a")
        ids = torch.randint(3, SHAPE["vocab_size"], (1, PREFILL),
                            generator=torch.Generator().manual_seed(1))
        routed = routed_copy(model.gm)
        with torch.no_grad():
            dense_logits, routed_logits = model.gm(ids), routed(ids)
            dense_s = median_seconds(lambda: model.gm(ids))
            routed_s = median_seconds(lambda: routed(ids))
        diff = float((dense_logits - routed_logits).abs().max()
                     / dense_logits.abs().max())
        prompt = ids[:, :16]
        gen_routed = median_seconds(lambda: model.generate(prompt, max_new_tokens=NEW_TOKENS), 3)
        tokens_routed = model.generate(prompt, max_new_tokens=NEW_TOKENS)
        os.environ["QC_ROUTED_EXPERTS"] = "0"
        dense_model = qcompiler.load(Path(tmp) / "a")
        gen_dense = median_seconds(lambda: dense_model.generate(prompt, max_new_tokens=NEW_TOKENS),
                                   3)
        same_tokens = torch.equal(dense_model.generate(prompt, max_new_tokens=NEW_TOKENS),
                                  tokens_routed)
    shape = ", ".join(f"{k} {v}" for k, v in SHAPE.items())
    lines = [
        "# MoE experts on the CPU: dense vs routed at run time", "",
        "Command: `python bench/moe_routing.py`  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}  ",
        f"Machine: {row_machine.describe()}; 1 torch thread; load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end  ",
        f"Model: random-init Qwen3-MoE ({shape}), razer4 g128 (RTN), `qcompiler.load`.", "",
        "| what | dense (every expert, every token) | routed (top-k tokens per expert) | "
        "dense / routed |",
        "|---|---|---|---|",
        f"| prefill of {PREFILL} tokens, median of {REPEATS} (s) | {dense_s:.3f} | "
        f"{routed_s:.3f} | {dense_s / routed_s:.2f}x |",
        f"| generate {NEW_TOKENS} tokens after 16, median of 3 (s) | {gen_dense:.3f} | "
        f"{gen_routed:.3f} | {gen_dense / gen_routed:.2f}x |",
        "",
        f"Largest prefill logit difference, relative to the largest logit: {diff:.1e}; "
        f"generated tokens identical: {'yes' if same_tokens else 'NO'}.",
        f"Expert FLOPs: the routed graph runs {SHAPE['num_experts_per_tok']} of "
        f"{SHAPE['num_experts']} experts per token; attention, norms, the router and the LM "
        "head are the same in both. The prefill runs the reference `qc.linear` ops, which "
        "dequantize each expert's weight at every call whatever its row count; the CPU decode "
        "program keeps dequantized weights, so it gains more.",
    ]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

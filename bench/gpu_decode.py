"""Decode section of bench/gpu_all.py: tokens/s of a random Llama-3-8B-shaped model.

The model is built from a config (no download): Llama-3-8B's widths (hidden 4096, MLP 14336,
32 heads, 8 KV heads, vocabulary 128256, untied head) with fewer layers (8 by default), fp16,
initialized on the GPU by transformers. Hugging Face's fp16 `generate` (eager PyTorch: no
torch.compile, its default SDPA attention and dynamic KV cache) is the baseline. The same
weights are then captured on the CPU (in fp16, so the compiled program runs fp16 activations
and the M = 1 fp16x2 GEMV), lowered with RTN to each decode format (the LM head stays fp16, as
lower-datatype skips it), moved to the GPU and run through `generate` with the static KV cache
and CUDA-graph decode steps. Both sides: greedy, exactly NEW_TOKENS new tokens (EOS ignored),
one warm-up (compiles kernels, captures graphs), then the best of REPEATS timed runs.
"""

from __future__ import annotations

import time
from typing import Any

import torch

NEW_TOKENS = 64
PROMPT = 16
REPEATS = 3
TARGET_B1 = 2.7  # issue 11: decode >= 2.7x HF fp16 eager at batch 1
FULL = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
            num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192)
SMALL = dict(hidden_size=256, intermediate_size=512, num_attention_heads=8,
             num_key_value_heads=2, vocab_size=512, max_position_embeddings=512)


def build_model(layers: int, device: torch.device, small: bool) -> torch.nn.Module:
    """A random Llama-3-shaped fp16 model on `device` (SMALL widths for --dry-run)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(num_hidden_layers=layers, rope_theta=500000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, **(SMALL if small else FULL))
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.to(torch.float16).eval()


def tokens_per_s(fn, batch: int, sync: bool, new_tokens: int, repeats: int) -> float:
    """Best of `repeats` timed runs after one warm-up; `new_tokens` per sequence."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if sync:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
        assert out.shape[1] == PROMPT + new_tokens, out.shape
    return batch * new_tokens / best


def decode(ctx: Any, report: Any, deadline: float) -> None:
    import qcompiler
    from qcompiler.capture import capture_hf_model
    from qcompiler.codegen import tuned
    from qcompiler.runtime import LoadedModel, move_program

    device, cuda = ctx.device, ctx.device.type == "cuda"
    new, repeats = (2, 1) if ctx.dry_run else (NEW_TOKENS, REPEATS)
    t0 = time.time()
    hf = build_model(ctx.decode_layers, device, small=ctx.dry_run)
    vocab = hf.config.vocab_size
    report.note("decode", f"model: {ctx.decode_layers} Llama-3-8B-shaped layers"
                + (" (small widths: dry run)" if ctx.dry_run else "")
                + f", {sum(p.numel() for p in hf.parameters()) / 1e9:.2f}B parameters, fp16; "
                f"prompt {PROMPT} tokens, {new} new, greedy, best of {repeats}; "
                f"built in {time.time() - t0:.1f} s")
    gen = torch.Generator().manual_seed(0)
    prompts = {b: torch.randint(3, vocab, (b, PROMPT), generator=gen).to(device)
               for b in ctx.decode_batches}
    hf_rate = {}
    for b, ids in prompts.items():
        def run_hf(ids=ids):
            with torch.no_grad():
                return hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=new, min_new_tokens=new,
                                   use_cache=True, pad_token_id=0)
        hf_rate[b] = tokens_per_s(run_hf, b, cuda, new, repeats)
        report.add("decode", {"run": "HF fp16 eager generate", "batch": b,
                              "new_tokens": new, "tok_s": hf_rate[b], "vs_hf": 1.0})
    hf.to("cpu")  # capture runs on the CPU (fake tensors; the weights stay where they are)
    if cuda:
        torch.cuda.empty_cache()
    t = time.time()
    program = capture_hf_model(hf, source="random Llama-3-8B-shaped")
    del hf
    report.note("decode", f"captured in {time.time() - t:.1f} s")
    for fmt in ctx.decode_formats:
        if time.time() > deadline:
            report.note("decode", f"{fmt}: skipped, section budget spent")
            continue
        t = time.time()
        group = tuned.group_size_for(fmt)  # the kernels section's specializations
        spec = f"canonicalize,dce,lower-datatype{{format={fmt},group-size={group},search=rtn}},dce"
        compiled = qcompiler.compile(program.clone(), pipeline=spec, quiet=True).program
        model = LoadedModel(move_program(compiled, device), {})
        report.note("decode", f"{fmt}: lowered (RTN) and moved in {time.time() - t:.1f} s")
        for b, ids in prompts.items():
            if time.time() > deadline:
                report.note("decode", f"{fmt} batch {b}: skipped, section budget spent")
                continue
            t = time.time()
            rate = tokens_per_s(lambda ids=ids: model.generate(ids, new, eos_token_id=[]),
                                b, cuda, new, repeats)
            row = {"run": f"qcompiler {fmt} generate" + (" (CUDA graphs)" if cuda else ""),
                   "batch": b, "new_tokens": new, "tok_s": rate,
                   "vs_hf": rate / hf_rate[b]}
            if b == 1:
                row["target"] = (f"{'met' if rate / hf_rate[b] >= TARGET_B1 else 'missed'} "
                                 f"(>={TARGET_B1}x)")
            report.add("decode", row)
            report.note("decode", f"{fmt} batch {b}: {time.time() - t:.1f} s with warm-up")
        del model, compiled
        if cuda:
            torch.cuda.empty_cache()

"""Running a decode program (qcompiler/decode_program.py) step by step, and checking it.

`attention_mask_4d` builds its `attn_mask` input; `run_cached` feeds a sequence through it (a
prefill, then one token at a time); `check_on_probe` compares that with the uncached program on
a seeded probe, so that a graph the rewrite gets wrong is refused (DecodeUnsupported) rather
than generating wrong tokens: `generate` then runs uncached.
"""

from __future__ import annotations

from typing import Any

import torch

from qcompiler.errors import DecodeUnsupported

PROBE_LEN = 8
PROBE_RTOL = 1e-4


def run_cached(decoder: Any, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits [B, T, V]: `prefill` tokens at once, then one at a time (no padding)."""
    batch, length = ids.shape
    caches = decoder.new_cache(batch, length, ids.device)
    slots = torch.ones(batch, length, dtype=torch.bool, device=ids.device)
    outs, start = [], 0
    for stop in [prefill, *range(prefill + 1, length + 1)]:
        cache_position = torch.arange(start, stop, device=ids.device)
        positions = cache_position[None].expand(batch, -1)
        outs.append(decoder(ids[:, start:stop], positions, cache_position,
                            attention_mask_4d(slots, cache_position), caches))
        start = stop
    return torch.cat(outs, dim=1)


def attention_mask_4d(slots: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
    """The `attn_mask` input, [B, 1, S, L] bool: the query at slot cache_position[i] sees slot
    j <= it when `slots[b, j]` holds a real token, and always itself (a pad query then has a
    finite row, and nothing else attends to it)."""
    j = torch.arange(slots.shape[1], device=slots.device)
    causal = j[None, :] <= cache_position[:, None]  # [S, L]
    own = j[None, :] == cache_position[:, None]
    return ((causal[None] & slots[:, None, :]) | own[None])[:, None]


def check_on_probe(program: Any, decoder: Any) -> None:
    """DecodeUnsupported unless the decoder's logits (prefill of half the probe, then one
    token at a time) equal the program's uncached logits to PROBE_RTOL (1e-2 off the CPU or
    below float32)."""
    vocab = int((program.meta.get("config") or {}).get("vocab_size") or 2)
    device = next(iter(program.gm.buffers()), torch.empty(0)).device
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(vocab, (1, PROBE_LEN), generator=g).to(device)
    try:
        with torch.no_grad():
            want = program.gm(ids)
            got = run_cached(decoder, ids, PROBE_LEN // 2).float()
    except Exception as e:  # the rewrite produced a graph that does not run
        raise DecodeUnsupported(f"the KV-cache decode program does not run: {e}") from None
    exact = want.dtype == torch.float32 and device.type == "cpu"
    want = want.float()
    err = float((got - want).abs().max()) / (float(want.abs().max()) or 1.0)
    rtol = PROBE_RTOL if exact else 1e-2
    if not err <= rtol:  # NaN fails too
        raise DecodeUnsupported(f"the KV-cache decode program disagrees with the program on a "
                                f"probe (relative error {err:.1e}); generate runs uncached")

"""CUDA-graph decoding: each decode step is one replay of a graph captured per batch bucket.

On CUDA a decode step of a small model is mostly host work: every `qc.linear_*` call checks its
tensors and launches a Triton kernel from Python (tens of microseconds each), so a step costs
far more than its kernels. `generate` therefore captures the step once per (batch bucket, cache
length) with `torch.cuda.graph` and replays it:

- static buffers per bucket (`StaticDecode`): the KV caches [bucket, Hkv, L, width], the step's
  inputs (tokens, positions [bucket, 1], cache slot [1]), the slot table the attention mask is
  built from [bucket, L], and the logits the graph writes. Batches are padded up to the bucket
  (BATCH_BUCKETS), lengths rounded up to LENGTH_MULTIPLE (capped at the model's maximum), so a
  handful of graphs serve every request; a later `generate` of the same bucket reuses the
  buffers and the graph (stale cache slots are never attended: causality masks them); at most
  MAX_STATES buffer sets are kept per decoder (the least recently used is dropped);
- the prompt (prefill, variable length) runs eagerly on the first `batch` rows of the static
  caches (views: the writes land in the static buffers);
- the first decode step copies its inputs into the static buffers, runs the step twice on a
  side stream (Triton compiles, configs are chosen, split-K workspaces are allocated: nothing
  may allocate or synchronize during capture), captures it, and replays. The step writes its
  token's key and value into one slot, so running it again is harmless: warm-up, capture and
  replay of one step give the same cache;
- every later step is three small copies (token, position, slot) and one `graph.replay()`.
  The returned logits are a view of the static output: read them before the next step.

A quantized KV cache (KV4) is captured too: its per-step quantization checks the keys and
values for NaN on the host (formats' `_check_input`), a synchronization, except while the
stream is capturing (the warm-up runs still check). Not captured (the steps run eagerly on the
same static buffers, with a one-time warning): any step whose capture fails.

Padding rows of a bucket attend to every slot of their (zero or stale, always finite) cache and
their tokens are ignored. `generate(..., cuda_graphs=False)` or QCOMPILER_CUDA_GRAPHS=0 turns
this off (eager steps, the CPU path); on the CPU it is always off.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

from qcompiler.decode_check import attention_mask_4d
from qcompiler.errors import QCompilerError

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
LENGTH_MULTIPLE = 256
WARMUP_RUNS = 2
MAX_STATES = 4  # (bucket, length) buffer sets kept per decoder; the least recently used goes
ENV = "QCOMPILER_CUDA_GRAPHS"


def wanted(device: torch.device, option: bool | None) -> bool:
    """Whether `generate` decodes through graphs: the option when given, else on CUDA unless
    QCOMPILER_CUDA_GRAPHS=0. Asking for graphs off CUDA is an error."""
    if option is None:
        return device_supports_graphs(device) and os.environ.get(ENV, "1") != "0"
    if option and not device_supports_graphs(device):
        raise QCompilerError(f"cuda_graphs=True needs a CUDA device; the model is on {device}: "
                             "move it with .to('cuda') or leave cuda_graphs unset")
    return bool(option)


def device_supports_graphs(device: torch.device) -> bool:
    return device.type == "cuda"


def batch_bucket(batch: int) -> int:
    """Smallest bucket holding `batch`; batches past the last bucket get their own size."""
    return next((b for b in BATCH_BUCKETS if batch <= b), batch)


def cache_length(needed: int, max_length: int | None) -> int:
    """`needed` slots rounded up to LENGTH_MULTIPLE, at most the model's maximum."""
    length = -(-needed // LENGTH_MULTIPLE) * LENGTH_MULTIPLE
    return min(length, max_length) if max_length else length


class StaticDecode:
    """The static buffers of one (bucket, cache length) and, once captured, its step graph."""

    def __init__(self, decoder: Any, bucket: int, length: int, device: torch.device):
        self.decoder = decoder
        self.bucket, self.length = bucket, length
        self.caches = decoder.new_cache(bucket, length, device)
        self.tokens = torch.zeros(bucket, 1, dtype=torch.long, device=device)
        self.position_ids = torch.zeros(bucket, 1, dtype=torch.long, device=device)
        self.cache_position = torch.zeros(1, dtype=torch.long, device=device)
        self.slots = torch.ones(bucket, length, dtype=torch.bool, device=device)
        self.logits: torch.Tensor | None = None  # [bucket, 1, V], written by the graph
        self.graph: Any = None
        self.replays = 0

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        """Eager: the prompts [B, T] into rows :B of the caches; last-position logits [B, V]."""
        batch, prompt = ids.shape
        self.slots.fill_(True)
        self.slots[:batch, :prompt] = mask
        cache_position = torch.arange(prompt, device=ids.device)
        attn = attention_mask_4d(self.slots[:batch], cache_position)
        rows = [c[:batch] for c in self.caches]
        return self.decoder(ids, position_ids, cache_position, attn, rows)[:, -1]

    def step(self, tokens: torch.Tensor, position_ids: torch.Tensor,
             cache_position: torch.Tensor) -> torch.Tensor:
        """One token per sequence: copy the inputs in, replay (capturing on first use); logits
        [B, V], a view of the static output."""
        batch = tokens.shape[0]
        self.tokens[:batch].copy_(tokens)
        self.position_ids[:batch].copy_(position_ids)
        self.cache_position.copy_(cache_position)
        if self.graph is None:
            self.capture()
        if self.graph is EAGER:
            self.logits = self._run()
        else:
            self.graph.replay()
            self.replays += 1
        return self.logits[:batch, -1]

    def capture(self) -> None:
        """Warm up on a side stream, then capture `_run` into a CUDA graph (or, when the
        capture fails, mark the step to run eagerly)."""
        try:
            self._capture()
            return
        except Exception as e:  # noqa: BLE001  a step that cannot be captured still runs
            why = f"its capture failed ({type(e).__name__}: {str(e)[:200]})"
        warnings.warn(f"qcompiler: decode steps run without CUDA graphs: {why}", stacklevel=3)
        self.graph = EAGER

    def _capture(self) -> None:
        current = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self._run()
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self._run()
        self.graph = graph

    def _run(self) -> torch.Tensor:
        """The captured step: reads only the static buffers."""
        attn = attention_mask_4d(self.slots, self.cache_position)
        return self.decoder(self.tokens, self.position_ids, self.cache_position, attn,
                            self.caches)


EAGER = "eager"  # StaticDecode.graph when the step runs uncaptured


class DecodeGraphs:
    """The StaticDecode of each (bucket, length) used so far, for one decoder (kept on it)."""

    def __init__(self, decoder: Any, max_length: int | None = None):
        self.decoder = decoder
        self.max_length = max_length
        self.states: dict[tuple[int, int], StaticDecode] = {}

    def state(self, batch: int, needed: int, device: torch.device) -> StaticDecode:
        key = (batch_bucket(batch), cache_length(needed, self.max_length))
        hit = self.states.pop(key, None)
        if hit is None:
            while len(self.states) >= MAX_STATES:  # bound the static caches' memory
                self.states.pop(next(iter(self.states)))
            hit = StaticDecode(self.decoder, key[0], key[1], device)
        self.states[key] = hit  # most recently used last
        return hit

    def clear(self) -> None:
        """Drop every graph and its buffers (frees the static caches)."""
        self.states.clear()


def graphs_for(decoder: Any, max_length: int | None = None) -> DecodeGraphs:
    """The decoder's DecodeGraphs (created on first use and kept as `decoder.cuda_graphs`)."""
    graphs = getattr(decoder, "cuda_graphs", None)
    if graphs is None:
        graphs = DecodeGraphs(decoder, max_length)
        decoder.cuda_graphs = graphs
    return graphs


def graphed_steps(decoder: Any, ids: torch.Tensor, mask: torch.Tensor, new: int,
                  max_length: int | None = None):
    """generation's step protocol through graphs: yields last-position logits [B, V] and
    receives each step's tokens [B] (the prefill first, then one replay per token)."""
    batch, prompt = ids.shape
    state = graphs_for(decoder, max_length).state(batch, prompt + new, ids.device)
    position_ids = (mask.long().cumsum(-1) - 1).masked_fill(~mask, 1)
    cache_position = torch.tensor([prompt - 1], device=ids.device)
    logits = state.prefill(ids, mask, position_ids)
    position_ids = position_ids[:, -1:]
    while True:
        tokens = (yield logits)[:, None]
        position_ids = position_ids + 1
        cache_position = cache_position + 1
        logits = state.step(tokens, position_ids, cache_position)

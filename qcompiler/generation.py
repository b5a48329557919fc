"""`generate`: batched token generation with a static KV cache, as Hugging Face's generate does.

    out = qcompiler.load(OUT).generate(ids, max_new_tokens=20)              # greedy
    out = model.generate(ids, attention_mask=mask, do_sample=True, top_p=0.9)

Returns [B, T + new] token ids (prompt, then the new tokens). Semantics follow HF:
- greedy by default; `do_sample` draws after temperature, top-k, then top-p (HF's order);
- left padding through `attention_mask` (1 = token, 0 = pad): pads are never attended to and
  positions count real tokens only (HF's `cumsum(mask) - 1`);
- `eos_token_id` (default: the model config's) ends a sequence: it keeps the EOS, later slots
  get `pad_token_id` (default: config pad, else EOS), and generation stops once all ended;
- it stops at the model's maximum length as well.

The cache is static (`qcompiler.decode_program`): allocated once for T + max_new_tokens slots
(on CUDA, per batch bucket and reused, each step one CUDA-graph replay: qcompiler/cuda_graphs.py),
one slot per step shared by the batch; `attn_mask` [B, 1, S, L] lets query slot i see slot j
when j <= i and slot j is a real token (and always itself, so a pad query has a finite row).
Models without a decode path (no RoPE) run the uncached loop: the whole prefix every step.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from qcompiler.cuda_graphs import graphed_steps
from qcompiler.cuda_graphs import wanted as cuda_graph_decoding
from qcompiler.decode_check import attention_mask_4d
from qcompiler.errors import QCompilerError

Streamer = Callable[[torch.Tensor], None]  # called with each step's new tokens [B]


def generate(model: Any, input_ids: torch.Tensor, max_new_tokens: int = 32, *,
             do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, eos_token_id: int | list[int] | None = None,
             attention_mask: torch.Tensor | None = None, pad_token_id: int | None = None,
             generator: torch.Generator | None = None, streamer: Streamer | None = None,
             use_cache: bool = True, cuda_graphs: bool | None = None) -> torch.Tensor:
    """Token ids [B, T + new]; `model` is a LoadedModel or a causal-LM Program (module doc).
    `cuda_graphs`: replay one captured graph per decode step (qcompiler/cuda_graphs.py);
    default on CUDA, unless QCOMPILER_CUDA_GRAPHS=0."""
    ids, mask = check_inputs(model, input_ids, attention_mask)
    _check_sampling(max_new_tokens, temperature, top_k, top_p)
    config = _config(model)
    eos = _eos_list(config.get("eos_token_id") if eos_token_id is None else eos_token_id)
    if pad_token_id is None:
        pad_token_id = config.get("pad_token_id")
        pad_token_id = pad_token_id if isinstance(pad_token_id, int) else (eos[0] if eos else 0)
    limit = _max_length(model)
    new = max(0, min(max_new_tokens, limit - ids.shape[1]) if limit else max_new_tokens)
    decoder = _decoder(model) if use_cache else None
    if decoder is None and not bool(mask.all()):
        raise QCompilerError("padded prompts (attention_mask with zeros) need the KV-cache "
                             "decode path, which this model does not have; pass one prompt "
                             "at a time")
    pick = _picker(do_sample, temperature, top_k, top_p, generator)
    graphed = decoder is not None and cuda_graph_decoding(ids.device, cuda_graphs)
    if graphed:
        steps = graphed_steps(decoder, ids, mask, new, limit)
    elif decoder is not None:
        steps = _cached_steps(decoder, ids, mask, new)
    else:
        steps = _uncached_steps(model, ids, new)
    out = ids
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    eos_t = torch.tensor(eos, dtype=ids.dtype, device=ids.device)
    for _ in range(new):
        logits = steps.send(None if out is ids else nxt)
        nxt = pick(logits.float()).to(ids.dtype)
        nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
        out = torch.cat([out, nxt[:, None]], dim=-1)
        if streamer is not None:
            streamer(nxt)
        if eos:
            done |= torch.isin(nxt, eos_t)
            if bool(done.all()):
                break
    steps.close()
    return out


# ---- the two step functions: yield last-position logits [B, V], receive the chosen tokens ----
def _cached_steps(decoder: Any, ids: torch.Tensor, mask: torch.Tensor, new: int):
    batch, prompt = ids.shape
    length = prompt + new
    device = ids.device
    caches = decoder.new_cache(batch, length, device)
    slots = torch.zeros(batch, length, dtype=torch.bool, device=device)
    slots[:, :prompt] = mask
    slots[:, prompt:] = True
    position_ids = (mask.long().cumsum(-1) - 1).masked_fill(~mask, 1)
    cache_position = torch.arange(prompt, device=device)
    tokens = ids
    while True:
        attn = attention_mask_4d(slots, cache_position)
        logits = decoder(tokens, position_ids, cache_position, attn, caches)[:, -1]
        tokens = (yield logits)[:, None]
        position_ids = position_ids[:, -1:] + 1
        cache_position = cache_position[-1:] + 1


def _uncached_steps(model: Any, ids: torch.Tensor, new: int):
    out = ids
    while True:
        with torch.no_grad():
            logits = model(out)[:, -1]
        out = torch.cat([out, (yield logits)[:, None]], dim=-1)


# ---- choosing tokens ------------------------------------------------------------------------
def _picker(do_sample: bool, temperature: float, top_k: int | None, top_p: float | None,
            generator: torch.Generator | None) -> Callable[[torch.Tensor], torch.Tensor]:
    if not do_sample:
        return lambda logits: logits.argmax(-1)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        scores = filter_logits(logits / temperature, top_k, top_p)
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    return pick


def filter_logits(scores: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """HF's TopKLogitsWarper then TopPLogitsWarper: removed tokens get -inf (one always kept)."""
    if top_k is not None and 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
        cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cum <= (1 - top_p)
        remove[..., -1:] = False
        scores = scores.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return scores


# ---- checks and model facts -----------------------------------------------------------------
def check_inputs(model: Any, input_ids: Any,
                 attention_mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, T] on the model's device, bool mask); QCompilerError naming the fix when the ids
    or mask cannot be generated from (shape, vocabulary, batch and length limits)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.is_floating_point():
        raise QCompilerError("input_ids must be an integer tensor of token ids, shape [B, T]")
    ids = input_ids[None] if input_ids.dim() == 1 else input_ids
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise QCompilerError(f"input_ids must have shape [B, T] with T >= 1, got "
                             f"{list(input_ids.shape)}")
    ids = ids.to(_device(model), torch.long)
    check_token_ids(model, ids)
    max_batch = _max_batch(model)
    if ids.shape[0] > max_batch:
        raise QCompilerError(f"batch of {ids.shape[0]} prompts is above the compiled maximum "
                             f"of {max_batch}; split it into batches of at most {max_batch}")
    limit = _max_length(model)
    if limit and ids.shape[1] >= limit:
        raise QCompilerError(f"the prompt has {ids.shape[1]} tokens; the model's cache holds "
                             f"{limit}: shorten the prompt to at most {limit - 1} tokens")
    if attention_mask is None:
        return ids, torch.ones_like(ids, dtype=torch.bool)
    mask = attention_mask[None] if attention_mask.dim() == 1 else attention_mask
    if tuple(mask.shape) != tuple(ids.shape):
        raise QCompilerError(f"attention_mask has shape {list(mask.shape)}; it must match "
                             f"input_ids {list(ids.shape)}")
    mask = mask.to(ids.device) != 0
    if not bool(mask.any(-1).all()):
        raise QCompilerError("attention_mask has a row of zeros: every prompt needs a token")
    return ids, mask


def check_token_ids(model: Any, ids: torch.Tensor) -> None:
    """QCompilerError when a token id is outside [0, vocab_size)."""
    vocab = _config(model).get("vocab_size")
    if vocab and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= int(vocab)):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        raise QCompilerError(f"token id {bad} is outside the vocabulary [0, {vocab})")


def _check_sampling(max_new_tokens: int, temperature: float, top_k: Any, top_p: Any) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise QCompilerError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not temperature > 0:
        raise QCompilerError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
        raise QCompilerError(f"top_k must be an integer >= 0, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise QCompilerError(f"top_p must be in (0, 1], got {top_p}")


def _eos_list(eos: Any) -> list[int]:
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


def _program(model: Any) -> Any:
    from qcompiler.program import Program

    return model if isinstance(model, Program) else getattr(model, "program", None)


def _config(model: Any) -> dict[str, Any]:
    program = _program(model)
    return (program.meta.get("config") or {}) if program is not None else {}


def _dims(model: Any, name: str) -> Any:
    program = _program(model)
    dims = program.dynamic_dims if program is not None else []
    return next((d for d in dims if d.name == name), None)


def _max_length(model: Any) -> int | None:
    seq = _dims(model, "seq")
    return seq.max if seq is not None else None


def _max_batch(model: Any) -> int:
    batch = _dims(model, "batch")
    if batch is not None:
        return batch.max
    program = _program(model)
    return int(program.example_inputs[0].shape[0]) if program is not None else 1


def _device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    program = _program(model)
    for t in (program.gm.buffers() if program is not None else ()):
        return t.device
    return torch.device("cpu")


def _decoder(model: Any) -> Any:
    """The model's DecodeProgram, or None when it has no decode path."""
    from qcompiler.decode_program import DecodeUnsupported, build_decode_program

    if hasattr(model, "decoder"):
        return model.decoder()
    try:
        return build_decode_program(_program(model))
    except DecodeUnsupported:
        return None

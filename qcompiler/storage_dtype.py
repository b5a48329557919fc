"""The dtype each tensor of an artifact is stored in: the narrowest one that holds it exactly.

Capture upcasts a bf16/fp16 checkpoint to fp32, so the tensors that stay unquantized
(embeddings, the LM head, norms, biases) would otherwise be written at twice the checkpoint's
size: a 268M-parameter model with a 262k vocabulary compiled to 726 MB, mostly its fp32
embedding. Storing such a tensor as bf16 or fp16 is lossless exactly when every element survives
the round trip, which is checked here bit for bit (so -0.0, infinities and subnormals are kept
or the tensor stays fp32); the manifest's tensor table then records both dtypes and `load`
widens the tensor back to the dtype the program was captured with. Nothing is ever rounded.

Tensors still being streamed from a checkpoint (the RTN path never loads them whole) take the
dtype of the shard they come from when that is bf16 or fp16: their fp32 values were upcast from
it, so the round trip is exact by construction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch

from qcompiler.errors import QCompilerError

NARROW = (torch.bfloat16, torch.float16)
_SHARD_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16}
_CHUNK = 1 << 22  # elements compared at a time: bounded extra memory for a large embedding


def exactly_representable(t: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether every fp32 element of `t` round-trips through `dtype` to the same bits."""
    flat = t.detach().reshape(-1)
    for start in range(0, flat.numel(), _CHUNK):
        chunk = flat[start:start + _CHUNK]
        back = chunk.to(dtype).to(torch.float32)
        if not torch.equal(back.view(torch.int32), chunk.view(torch.int32)):
            return False
    return True


def preferred_order(program: Any) -> tuple[torch.dtype, ...]:
    """bf16 and fp16 in the order to try: the checkpoint's own 16-bit dtype first, so that a
    tensor exact in both (a norm of ones) is stored as the checkpoint had it, whether it was
    read whole or streamed."""
    model_dir = program.meta.get("model_dir")
    shards = sorted(Path(model_dir).glob("*.safetensors")) if model_dir else []
    if shards and checkpoint_dtype(str(shards[0])) == torch.float16:
        return (torch.float16, torch.bfloat16)
    return NARROW


def checkpoint_dtype(shard: str) -> torch.dtype | None:
    """The 16-bit float dtype of the first floating tensor of a safetensors shard, if any."""
    from safetensors import safe_open

    try:
        with safe_open(shard, framework="pt") as f:
            for key in f.keys():
                name = f.get_slice(key).get_dtype()
                if name.startswith(("F", "BF")):
                    return _SHARD_DTYPES.get(name)
    except Exception:  # unreadable: no preference
        return None
    return None


def storage_dtype(t: torch.Tensor, order: tuple[torch.dtype, ...] = NARROW) -> torch.dtype:
    """The dtype to store `t` in: a 16-bit float that holds it exactly, else its own dtype."""
    if t.dtype != torch.float32 or t.numel() == 0:
        return t.dtype
    for dtype in order:
        if exactly_representable(t, dtype):
            return dtype
    return t.dtype


def shard_dtype(shard: Any, key: Any) -> torch.dtype | None:
    """The dtype of the streamed tensor `[shard, key]` (qcompiler/lazy_tensors.py) when it is
    bf16 or fp16."""
    from qcompiler.lazy_tensors import source_dtype

    try:
        return _SHARD_DTYPES.get(source_dtype(shard, key) or "")
    except QCompilerError:  # unreadable now: keep fp32; the write reports the real error
        return None


def storage_dtypes(program: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.dtype]:
    """name -> the dtype to store it in, for every tensor of `program`."""
    lazy = program.meta.get("lazy_tensors") or {}
    order = preferred_order(program)
    out = {}
    for name, t in tensors.items():
        if name in lazy:
            narrow = shard_dtype(*lazy[name]) if t.dtype == torch.float32 else None
            out[name] = narrow or t.dtype
        else:
            out[name] = storage_dtype(t, order)
    return out


def cast_blocks(value: torch.Tensor | Iterable[torch.Tensor],
                dtype: torch.dtype) -> torch.Tensor | Iterable[torch.Tensor]:
    """A tensor, or an iterable of row blocks of one, in `dtype` (exact by the choice above)."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype)
    return (block.to(dtype) for block in value)

"""A KV cache stored quantized: the packed parts of a KV4 format, one row per (batch, head, slot).

`qc.quantize_kv` (qcompiler/act_ops.py) models a quantized KV cache as quantize-then-dequantize
of each token's head vector, in groups along head_dim. The decode program
(qcompiler/decode_program.py) stores what that op stands for: for a key or value behind a
`qc.quantize_kv`, its cache is the format's parts (codes, scales, and meta or zeros), each
[B, Hkv, L, width], and every step

    %k_cache_0_read = py.quantized_kv_update([%k_cache_0_codes, %k_cache_0_scales, ...],
                          %cache_position, %k, "razer4-kv", 32, ["codes", "scales", "meta"])

quantizes the new tokens into their slots (RTN, as the op) and dequantizes the whole cache for
the attention. The KV formats quantize each row on its own (no per-tensor scale), so the
dequantized cache equals the op's output token for token: cached logits are the uncached
program's. Memory: a 4-bit cache with fp16 scales in groups of 32 takes 4.5 bits per element
instead of 32; the dequantized copy exists only during one attention.
"""

from __future__ import annotations

import torch

from qcompiler.errors import QCompilerError


def part_layout(fmt_name: str, group_size: int,
                head_dim: int) -> list[tuple[str, int, torch.dtype]]:
    """(part name, width per row, dtype) of the format's packed parts for one head vector."""
    from qcompiler import formats

    probe = torch.linspace(-1, 1, head_dim)[None]
    q = formats.get(fmt_name).quantize(probe, group_size=group_size, search="rtn")
    if q.global_scale is not None:
        raise QCompilerError(f"{fmt_name} has a per-tensor scale; a KV cache cannot store it "
                             "one token at a time")
    return [(name, int(t.shape[-1]), t.dtype) for name, t in q.tensors().items()]


def quantized_kv_update(parts: list[torch.Tensor], cache_position: torch.Tensor,
                        x: torch.Tensor, fmt_name: str, group_size: int,
                        names: list[str]) -> torch.Tensor:
    """Write x [B, H, S, D] quantized into slots `cache_position` of the part caches (in
    place); return the whole cache dequantized, [B, H, L, D] in x's dtype."""
    from qcompiler import formats
    from qcompiler.formats.base import QTensor

    fmt = formats.get(fmt_name)
    batch, heads, seq, dim = x.shape
    q = fmt.quantize(x.reshape(-1, dim).to(torch.float32), group_size=group_size, search="rtn")
    new = q.tensors()
    for name, cache in zip(names, parts):
        cache.index_copy_(2, cache_position, new[name].reshape(batch, heads, seq, -1))
    length = parts[0].shape[2]
    rows = batch * heads * length
    stored = {name: cache.reshape(rows, -1) for name, cache in zip(names, parts)}
    whole = QTensor.from_tensors(fmt_name, (rows, dim), group_size, stored, q.opts)
    return fmt.dequantize(whole, dtype=torch.float32).reshape(batch, heads, length, dim).to(
        x.dtype)

"""Bit packing of quantization codes: the one layout that kernels, passes and files share.

Codes are unsigned integers `0 .. 2**bits - 1` along the last dimension K (docs/CONTRACTS.md):

- 8-bit: one code per byte, shape `[..., K]`.
- 4-bit: byte j holds element 2j in the LOW nibble and 2j+1 in the HIGH nibble, `[..., K/2]`.
  Low-first matches how a kernel walks K: `(b >> 4*i) & 0xF` for i = 0, 1.
- 2-bit: element 4j+i at bits 2i..2i+1 of byte j, `[..., K/4]`.
- 3-bit: 8 elements per 3 bytes; element 8j+i at bits 3i..3i+2 of the little-endian 24-bit word
  made of bytes 3j, 3j+1, 3j+2, `[..., 3K/8]`. No code straddles a 3-byte word, so a kernel
  loads 3 bytes, assembles one int and shifts: no cross-word carries.

All functions are vectorized tensor ops (shifts and ORs on int32), so they run on any device.
"""

from __future__ import annotations

import torch

from qcompiler.errors import QCompilerError

SUPPORTED_BITS = (2, 3, 4, 8)

# elements per packing unit, bytes per packing unit
_UNIT = {2: (4, 1), 3: (8, 3), 4: (2, 1), 8: (1, 1)}


def elements_per_unit(bits: int) -> int:
    """How many codes share one packing unit (K must be a multiple of this)."""
    return _unit(bits)[0]


def packed_width(k: int, bits: int) -> int:
    """Bytes per row of K codes."""
    per, nbytes = _unit(bits)
    _check_k(k, bits)
    return k // per * nbytes


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack `codes` (any integer dtype, values < 2**bits) along the last dim into uint8."""
    per, nbytes = _unit(bits)
    k = codes.shape[-1]
    _check_k(k, bits)
    if bits == 8:
        return codes.to(torch.uint8).contiguous()
    if bits in (2, 4):  # whole bytes: OR the shifted uint8 lanes (a broadcast int32 shift and
        c = codes.to(torch.uint8).reshape(*codes.shape[:-1], k // per, per)  # sum is ~10x slower)
        out = c[..., 0].clone()
        for i in range(1, per):
            out |= c[..., i] << (i * bits)
        return out
    lead = codes.shape[:-1]
    c = codes.to(torch.int32).reshape(*lead, k // per, per)
    shifts = torch.arange(per, device=codes.device, dtype=torch.int32) * bits
    word = (c << shifts).sum(dim=-1, dtype=torch.int32)  # disjoint bit fields: sum == OR
    if nbytes == 1:
        return word.to(torch.uint8).reshape(*lead, k // per)
    byte_shifts = torch.arange(nbytes, device=codes.device, dtype=torch.int32) * 8
    out = (word.unsqueeze(-1) >> byte_shifts) & 0xFF
    return out.to(torch.uint8).reshape(*lead, k // per * nbytes)


def unpack(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of `pack`: uint8 `[..., packed_width(k, bits)]` -> uint8 codes `[..., k]`."""
    per, nbytes = _unit(bits)
    if packed.shape[-1] != packed_width(k, bits):
        raise ValueError(f"packed width {packed.shape[-1]} does not hold K={k} {bits}-bit codes")
    if bits == 8:
        return packed.to(torch.uint8)
    lead = packed.shape[:-1]
    p = packed.to(torch.int32)
    if nbytes == 1:
        word = p
    else:
        p = p.reshape(*lead, k // per, nbytes)
        byte_shifts = torch.arange(nbytes, device=packed.device, dtype=torch.int32) * 8
        word = (p << byte_shifts).sum(dim=-1, dtype=torch.int32)
    shifts = torch.arange(per, device=packed.device, dtype=torch.int32) * bits
    codes = (word.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return codes.to(torch.uint8).reshape(*lead, k)


def _unit(bits: int) -> tuple[int, int]:
    if bits not in _UNIT:
        raise ValueError(f"no packing for {bits}-bit codes (supported: {SUPPORTED_BITS})")
    return _UNIT[bits]


def _check_k(k: int, bits: int) -> None:
    per = _UNIT[bits][0]
    if k % per:
        raise QCompilerError(f"{bits}-bit packing needs K divisible by {per}, got K={k}")

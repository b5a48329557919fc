"""NumPy emulator of the GEMM's word-decode op lists (gemm16_asm.program), for the tests.

Inline PTX cannot run without a GPU, so tests/codegen/test_gemm16.py runs the very op list the
asm is rendered from, with PTX semantics, over every byte value and group operand.
"""

from __future__ import annotations

import numpy as np

from qcompiler.codegen.decode_plan import DecodePlan
from qcompiler.codegen.gemm16_asm import Op, aux_input, program


def emulate(plan: DecodePlan, w: np.ndarray, aux: np.ndarray | int, s: np.ndarray) -> np.ndarray:
    """Run `program(plan)` on uint32 words w [...] with the per-word `aux_input` value (the
    int pair, or RaZeR's meta index) and fp16 scale s: fp16 [..., 8], code j at position j."""
    w = np.asarray(w, np.uint32)
    sp = np.broadcast_to(np.asarray(s, np.float16), w.shape)
    regs = {"w": w, str(aux_input(plan)): np.broadcast_to(np.asarray(aux, np.uint32), w.shape),
            "sp": _pack(sp, sp)}
    for op in program(plan):
        regs[op.dst] = _np_op(op, regs)
    out = np.stack([regs[f"o{k}"] for k in range(4)], axis=-1)  # [..., 4] pairs
    return out.astype(np.uint32).view(np.float16).reshape(*w.shape, 8)


def _lanes(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(r, np.uint32)
    return ((r & 0xFFFF).astype(np.uint16).view(np.float16).astype(np.float64),
            (r >> 16).astype(np.uint16).view(np.float16).astype(np.float64))


def _pack(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    lo16 = np.asarray(lo, np.float16).view(np.uint16).astype(np.uint32)
    hi16 = np.asarray(hi, np.float16).view(np.uint16).astype(np.uint32)
    return lo16 | (hi16 << 16)


def _prmt(a: np.ndarray, b: np.ndarray, sel: np.ndarray) -> np.ndarray:
    eight = a.astype(np.uint64) | (b.astype(np.uint64) << np.uint64(32))
    sel = np.asarray(sel, np.uint64)
    out = np.zeros(np.broadcast(a, b, sel).shape, np.uint64)
    for k in range(4):
        nib = (sel >> np.uint64(4 * k)) & np.uint64(15)
        byte = (eight >> (np.uint64(8) * (nib & np.uint64(7)))) & np.uint64(0xFF)
        byte = np.where(nib & np.uint64(8), (byte >> np.uint64(7)) * np.uint64(0xFF), byte)
        out |= byte << np.uint64(8 * k)
    return out.astype(np.uint32)


def _np_op(op: Op, regs: dict[str, np.ndarray]) -> np.ndarray:
    """One op with PTX semantics: prmt default mode (selector bit 3 replicates the byte's msb),
    lop3 truth table over (0xF0, 0xCC, 0xAA), logical shifts, wrapping sub, f16x2 math rounded
    to nearest even per lane (fma as exact product + one rounding: the decode's fmas are exact)."""
    v = [np.uint32(s) if isinstance(s, int) else regs[s] for s in op.srcs]
    shape = regs["w"].shape
    with np.errstate(over="ignore", invalid="ignore"):
        if op.name == "shl":
            return (v[0].astype(np.uint64) << np.uint64(op.imm)).astype(np.uint32)
        if op.name == "shr":
            return v[0] >> np.uint32(op.imm)
        if op.name == "sub":
            return (np.int64(0) + v[0].astype(np.int64) - v[1].astype(np.int64)).astype(np.uint32)
        if op.name in ("mov", "movv"):  # movv: a table word the kernel passes in
            return np.broadcast_to(np.uint32(op.srcs[0]), shape).copy()
        if op.name == "mad":
            return (v[0].astype(np.uint64) * np.uint64(v[1]) + np.uint64(v[2])).astype(np.uint32)
        if op.name == "prmt":
            sel = v[2] if len(v) == 3 else np.uint32(op.imm)
            return _prmt(v[0], v[1], sel)
        if op.name == "lop3":
            a, b, c = (np.asarray(t, np.uint32) for t in v)
            out = np.zeros(np.broadcast(a, b, c).shape, np.uint32)
            for i in range(8):
                if op.imm >> i & 1:
                    out |= (a if i & 4 else ~a) & (b if i & 2 else ~b) & (c if i & 1 else ~c)
            return out
        f = [_lanes(t) for t in v]
        if op.name == "hsub2":
            return _pack(f[0][0] - f[1][0], f[0][1] - f[1][1])
        if op.name == "hmul2":
            return _pack(f[0][0] * f[1][0], f[0][1] * f[1][1])
        if op.name == "hfma2":
            return _pack(f[0][0] * f[1][0] + f[2][0], f[0][1] * f[1][1] + f[2][1])
        if op.name == "hseteq":
            return (np.where(f[0][0] == f[1][0], 0x3C00, 0)
                    | np.where(f[0][1] == f[1][1], 0x3C000000, 0)).astype(np.uint32)
    raise ValueError(op.name)


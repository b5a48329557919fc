"""The op-list form of the inline-PTX decodes, shared by the M = 1 GEMV (decode16.py) and the
tensor-core GEMM (gemm16_asm.py): an `Op` per PTX instruction, the lop3 truth tables and prmt
selectors both use, and the renderer of one op to PTX. Each kernel keeps its own op lists (they
evolve apart); NumPy emulators (decode16_sim.py, gemm16_sim.py) run the same lists."""

from __future__ import annotations

from dataclasses import dataclass

# lop3 truth tables over (a=0xF0, b=0xCC, c=0xAA)
LUT_A_AND_B_OR_C = 0xEA  # (a & b) | c
LUT_A_AND_B = 0xC0
LUT_A_OR_B = 0xFC


@dataclass(frozen=True)
class Op:
    """dst = name(srcs); an int src is a 32-bit immediate (staged in a register for f16x2 ops)."""

    name: str  # mov shl shr prmt lop3 sub and mad hsub2 hmul2 hfma2 hseteq
    dst: str
    srcs: tuple[str | int, ...]
    imm: int = 0  # shift amount, prmt selector or lop3 truth table


def prmt_select(k: int) -> int:
    """prmt selector: byte 1 <- byte k of a, byte 3 <- byte k of b (bytes 0, 2 the same)."""
    return k | (k << 4) | ((4 + k) << 8) | ((4 + k) << 12)


_F16X2 = {"hsub2": "sub.rn.f16x2 {d}, {0}, {1};", "hmul2": "mul.rn.f16x2 {d}, {0}, {1};",
          "hfma2": "fma.rn.f16x2 {d}, {0}, {1}, {2};",
          "hseteq": "set.eq.f16x2.f16x2 {d}, {0}, {1};"}


def render(op: Op) -> str:
    """One op as PTX; f16x2 ops take registers only, so their immediates go through the
    scratch register `s` (free wherever one is used)."""
    a = [f"{s:#010x}" if isinstance(s, int) else s for s in op.srcs]
    if op.name in ("shl", "shr"):
        kind = "shl.b32" if op.name == "shl" else "shr.u32"
        return f"{kind} {op.dst}, {a[0]}, {op.imm};"
    if op.name == "mov":
        return f"mov.b32 {op.dst}, {a[0]};"
    if op.name == "prmt":
        sel = a[2] if len(a) == 3 else f"{op.imm:#06x}"  # selector in a register, or immediate
        return f"prmt.b32 {op.dst}, {a[0]}, {a[1]}, {sel};"
    if op.name == "lop3":
        return f"lop3.b32 {op.dst}, {a[0]}, {a[1]}, {a[2]}, {op.imm:#04x};"
    if op.name == "sub":
        return f"sub.u32 {op.dst}, {a[0]}, {a[1]};"
    if op.name == "and":
        return f"and.b32 {op.dst}, {a[0]}, {a[1]};"
    if op.name == "mad":
        return f"mad.lo.u32 {op.dst}, {a[0]}, {a[1]}, {a[2]};"
    pre, regs = [], []
    for s in op.srcs:
        if isinstance(s, int):
            pre.append(f"mov.b32 s, {s:#010x};")
            regs.append("s")
        else:
            regs.append(s)
    return " ".join(pre + [_F16X2[op.name].format(*regs, d=op.dst)])

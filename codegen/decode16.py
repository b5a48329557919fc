"""fp16x2 decode-and-dot programs for 4-bit codes: one op list, three renderings.

The M = 1 GEMV (gemv16.py) is issue-bound unless the per-code work is a handful of
instructions, so the inner loop is written as a short straight-line program over 32-bit
registers: one word of 8 packed codes in, two codes per fp16x2 register, `fma.rn.f16x2` against
the activations. The program is a list of ops (`Op`), and that single list is rendered three ways:
- `ptx(...)`: the inline PTX the GPU kernel runs (`tl.inline_asm_elementwise`, 4 words per asm
  instance: a thread's 128-bit load);
- `triton_source(...)`: a pure-Triton twin with the same bit semantics, used under
  TRITON_INTERPRET (inline assembly cannot run there);
- `emulate(...)`: NumPy, for the exhaustive bit-level tests (tests/codegen/test_decode16.py).

Lane layout: byte k of the word holds codes 2k (low nibble) and 2k+1 (high nibble), so pair k
decodes into lanes (lo, hi) that line up with the activation pair x[2k], x[2k+1] as loaded
(no activation shuffles). `prmt` moves byte k into place; the families then need:
- int (int4, int4-sym): `(t & 0x000F000F) | 0x64006400` is fp16 1024 + q per lane (one lop3),
  minus the per-group pair 1024 + zero (+ offset): exact q - z;
- minifloat E2M1 (fp4, mxfp4, nvfp4, razer4, nvfp4-razer): code nibble at the top of each half,
  magnitude bits `>> 3` into fp16's exponent/mantissa (value * 2^-14, exact), times a per-lane
  +-2^14 built from the sign bit by one lop3: exact E2M1 values;
- RaZeR: the word's junk nibbles are cleared once (two lop3 per word) and the prmt fills the
  low byte of each lane with the sign-replicated code byte, so code 8 is exactly the lane
  0x80FF: one `set.eq` gives 1.0 there, and one fma adds -special * 2^-14 (a per-group
  register) to its zero magnitude before the +-2^14 multiply: no per-element table load or
  branch;
- pot (pot4): exponent field (15 + E0 - m) << 10 by an integer subtract, sign ORed in;
- sign-magnitude tables (dint4): a second prmt looks the 8 magnitudes' fp16 high bytes up in
  two constant registers (selector = the magnitude nibbles), the sign is ORed in.
All decoded values are exact in fp16 (test_decode16 checks every byte value against the
formats' reference `dequantize`); scales are applied once per group, in fp32, to the fp16x2
partial sum of at most 4 words (16 products per lane).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompiler.codegen.decode_plan import DecodeFamily, DecodePlan

E2M1 = ((2, 1, True),)  # (EXP_BITS, MAN_BITS, SIGNED) the minifloat decode handles


@dataclass(frozen=True)
class Op:
    """dst = name(srcs); an int src is a 32-bit immediate (materialized for f16x2 ops)."""

    name: str  # mov shl shr prmt lop3 sub hsub2 hmul2 hfma2 hseteq
    dst: str
    srcs: tuple[str | int, ...]
    imm: int = 0  # shift amount, prmt selector or lop3 truth table


def _sel(k: int) -> int:
    """prmt selector: byte 1 <- byte k of a, byte 3 <- byte k of b (bytes 0, 2 the same)."""
    return k | (k << 4) | ((4 + k) << 8) | ((4 + k) << 12)


LUT_A_AND_B_OR_C = 0xEA  # (a & b) | c with a=0xF0, b=0xCC, c=0xAA
LUT_A_AND_B = 0xC0
LUT_A_OR_B = 0xFC


def supported(plan: DecodePlan) -> bool:
    """Whether the fp16x2 GEMV decodes `plan` (else the fp32 GEMV serves M = 1 too)."""
    p = dict(plan.params)
    if plan.bits != 4 or plan.elems_per_unit != 2 or plan.unit_bytes != 1:
        return False
    if plan.family is DecodeFamily.INT:
        return p["XOR"] == 0
    if plan.family is DecodeFamily.MINIFLOAT:
        if p["SPECIAL_CODE"] == 8:
            try:
                [special_pair(p[f"SPECIAL_{i}"]) for i in range(4)]
            except ValueError:
                return False
        return (p["EXP_BITS"], p["MAN_BITS"], p["SIGNED"]) in E2M1 and p["SPECIAL_CODE"] in (-1, 8)
    if plan.family is DecodeFamily.POT:
        return p["MAG_BITS"] == 3 and 1 <= 15 + p["E0"] - 7 and 15 + p["E0"] <= 30
    if plan.family is DecodeFamily.TABLE:
        return table_bytes(plan) is not None
    return False


def table_bytes(plan: DecodePlan) -> tuple[int, int] | None:
    """Sign-magnitude tables (dint4) whose 8 magnitudes are fp16 values with a zero low byte
    and magnitude 0 first: the two registers of fp16 high bytes a `prmt` looks them up in."""
    p = dict(plan.params)
    if plan.family is not DecodeFamily.TABLE or p["SIGN_BIT"] != 3:
        return None
    mags = [p[f"V{i}"] for i in range(8)]
    bits = [int(np.array(v, np.float16).view(np.uint16)) for v in mags]
    if (mags[0] != 0.0 or any(float(np.float16(v)) != v or v < 0 for v in mags)
            or any(b & 0xFF for b in bits)):
        return None
    hi = [b >> 8 for b in bits]
    return (hi[0] | hi[1] << 8 | hi[2] << 16 | hi[3] << 24,
            hi[4] | hi[5] << 8 | hi[6] << 16 | hi[7] << 24)


def special_pair(value: float) -> int:
    """The RaZeR operand of a special value: fp16 bits of -value * 2^-14, in both halves."""
    v = np.float16(-value * 2.0 ** -14)
    if float(v) != -value * 2.0 ** -14:
        raise ValueError(f"special value {value}: -value * 2^-14 is not exact in fp16")
    bits = int(np.array(v).view(np.uint16))
    return bits | (bits << 16)


def has_aux(plan: DecodePlan) -> bool:
    """A per-group fp16x2 operand: 1024 + zero (int) or the special value (RaZeR)."""
    return plan.family is DecodeFamily.INT or (
        plan.family is DecodeFamily.MINIFLOAT and dict(plan.params)["SPECIAL_CODE"] == 8)


def word_program(plan: DecodePlan) -> list[Op]:
    """Ops decoding word `w` and accumulating into `acc` with activations x0..x3 (and `aux`)."""
    p = dict(plan.params)
    ops: list[Op] = []
    if plan.family is DecodeFamily.INT:
        ops.append(Op("shr", "ws", ("w",), 4))
        for k in range(4):
            ops += [Op("prmt", "t", ("w", "ws"), _sel(k)),
                    Op("lop3", "t", ("t", 0x000F000F, 0x64006400), LUT_A_AND_B_OR_C),
                    Op("hsub2", "t", ("t", "aux")),
                    Op("hfma2", "acc", ("t", f"x{k}", "acc"))]
        return ops
    special = plan.family is DecodeFamily.MINIFLOAT and p.get("SPECIAL_CODE") == 8
    ops.append(Op("shl", "w4", ("w",), 4))
    if plan.family is DecodeFamily.TABLE:  # 8 magnitudes by prmt, sign from the code's bit 3
        t0, t1 = table_bytes(plan)  # type: ignore[misc]
        ops += [Op("mov", "e", (t0,)), Op("mov", "m", (t1,))]
        for k in range(4):
            ops += [Op("prmt", "a", ("w4", "w"), _sel(k)),  # signs at bits 15 / 31
                    Op("prmt", "s", ("w4", "w"), k | ((4 + k) << 4)),  # codes at nibbles 1, 3
                    Op("lop3", "s", ("s", 0x7070, 0), LUT_A_AND_B),  # magnitudes; others -> 0
                    Op("prmt", "t", ("e", "m", "s"), -1),  # fp16 high bytes, low bytes 0
                    Op("lop3", "t", ("a", 0x80008000, "t"), LUT_A_AND_B_OR_C),
                    Op("hfma2", "acc", ("t", f"x{k}", "acc"))]
        return ops
    if special:  # clear the junk nibbles: a lane is then exactly (code << 12) | 0x00 or 0xFF
        ops += [Op("lop3", "w4", ("w4", 0xF0F0F0F0, 0), LUT_A_AND_B),
                Op("lop3", "wm", ("w", 0xF0F0F0F0, 0), LUT_A_AND_B)]
    for k in range(4):
        if special:  # low bytes: sign-replicated code bytes, so code 8 is exactly 0x80FF
            ops.append(Op("prmt", "a", ("w4", "wm"), _sel(k) | 0x0808))
            ops.append(Op("hseteq", "e", ("a", 0x80FF80FF)))  # 1.0 where the code is 8
        else:  # code 2k / 2k+1 at bits 12-15 / 28-31
            ops.append(Op("prmt", "a", ("w4", "w"), _sel(k)))
        if plan.family is DecodeFamily.MINIFLOAT:
            ops += [Op("shr", "m", ("a",), 3),
                    Op("lop3", "m", ("m", 0x0E000E00, 0), LUT_A_AND_B),
                    Op("lop3", "s", ("a", 0x80008000, 0x74007400), LUT_A_AND_B_OR_C)]
            if special:  # code 8: magnitude 0 + (-special * 2^-14), times -2^14 = special
                ops.append(Op("hfma2", "m", ("e", "aux", "m")))
            ops.append(Op("hmul2", "t", ("m", "s")))
        else:  # pot: +-2^(E0 - m)
            base = (15 + p["E0"]) << 10
            ops += [Op("shr", "m", ("a",), 2),
                    Op("lop3", "m", ("m", 0x1C001C00, 0), LUT_A_AND_B),
                    Op("sub", "m", (base | (base << 16), "m")),
                    Op("lop3", "t", ("a", 0x80008000, "m"), LUT_A_AND_B_OR_C)]
        ops.append(Op("hfma2", "acc", ("t", f"x{k}", "acc")))
    return ops


# ----------------------------------------------------------------------------- inline PTX


def ptx(plan: DecodePlan, words_per_group: int) -> tuple[str, str]:
    """(asm, constraints) for `tl.inline_asm_elementwise(..., pack=4)`.

    Operands: $0-$3 the fp32 accumulators out; then per input 4 registers (one per word):
    w, x0 .. x3 (the word's activations as fp16x2 pairs), aux (if any), scale (fp32), acc in.
    Words are chained in fp16x2 `words_per_group` at a time (4, or 2 for 16-code groups), each
    chain converted once, scaled and added to its first word's fp32 accumulator; the other
    accumulators pass through.
    """
    aux = has_aux(plan)
    regs = iter(range(4, 64))
    w_r, x_r = [f"${next(regs)}" for _ in range(4)], []
    for _ in range(4):
        x_r.append([f"${next(regs)}" for _ in range(4)])
    aux_r = [f"${next(regs)}" for _ in range(4)] if aux else None
    s_r = [f"${next(regs)}" for _ in range(4)]
    acc_r = [f"${next(regs)}" for _ in range(4)]
    lines = ["{", ".reg .b32 w, ws, w4, wm, t, a, m, s, e, acc, aux, x0, x1, x2, x3;",
             ".reg .b16 lo16, hi16;", ".reg .f32 flo, fhi;"]
    prog = word_program(plan)
    for i in range(4):
        if i % words_per_group == 0:
            lines.append("mov.b32 acc, 0;")
        lines += [f"mov.b32 w, {w_r[i]};"] + [f"mov.b32 x{k}, {x_r[k][i]};" for k in range(4)]
        if aux_r:
            lines.append(f"mov.b32 aux, {aux_r[i]};")
        lines += [_ptx_op(op) for op in prog]
        if i % words_per_group == words_per_group - 1:
            j = i - words_per_group + 1  # the chain's first word carries its result
            lines += ["mov.b32 {lo16, hi16}, acc;", "cvt.f32.f16 flo, lo16;",
                      "cvt.f32.f16 fhi, hi16;", "add.f32 flo, flo, fhi;",
                      f"fma.rn.f32 $" + str(j) + f", flo, {s_r[j]}, {acc_r[j]};"]
            lines += [f"mov.b32 ${r}, {acc_r[r]};" for r in range(j + 1, i + 1)]
    lines.append("}")
    cons = ",".join(["=f"] * 4 + ["r"] * (4 * (5 + aux)) + ["f"] * 8)
    return "\n".join(lines), cons


def _ptx_op(op: Op) -> str:
    def src(s: str | int) -> str:
        return f"{s:#010x}" if isinstance(s, int) else s

    a = [src(s) for s in op.srcs]
    if op.name == "shl":
        return f"shl.b32 {op.dst}, {a[0]}, {op.imm};"
    if op.name == "shr":
        return f"shr.u32 {op.dst}, {a[0]}, {op.imm};"
    if op.name == "mov":
        return f"mov.b32 {op.dst}, {a[0]};"
    if op.name == "prmt":
        if len(a) == 3:  # selector in a register
            return f"prmt.b32 {op.dst}, {a[0]}, {a[1]}, {a[2]};"
        return f"prmt.b32 {op.dst}, {a[0]}, {a[1]}, {op.imm:#06x};"
    if op.name == "lop3":
        return f"lop3.b32 {op.dst}, {a[0]}, {a[1]}, {a[2]}, {op.imm:#04x};"
    if op.name == "sub":
        return f"sub.u32 {op.dst}, {a[0]}, {a[1]};"
    # f16x2 ops take registers only: an immediate goes through `s` (dead wherever one is used)
    pre, regs = [], []
    for s in op.srcs:
        if isinstance(s, int):
            pre.append(f"mov.b32 s, {s:#010x};")  # `s` is free whenever an f16x2 imm is used
            regs.append("s")
        else:
            regs.append(s)
    body = {"hsub2": "sub.rn.f16x2 {d}, {0}, {1};", "hmul2": "mul.rn.f16x2 {d}, {0}, {1};",
            "hfma2": "fma.rn.f16x2 {d}, {0}, {1}, {2};",
            "hseteq": "set.eq.f16x2.f16x2 {d}, {0}, {1};"}[op.name]
    return " ".join(pre + [body.format(*regs, d=op.dst)])

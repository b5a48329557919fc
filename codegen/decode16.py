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
(no activation shuffles). The programs (`program_kind`):
- "int" (int4, int4-sym): `prmt` moves byte k into place, `(t & 0x000F000F) | 0x64006400` is
  fp16 1024 + q per lane (one lop3), minus the per-group pair 1024 + zero (+ offset): q - z;
- "sm", sign-magnitude byte table (fp4, mxfp4, nvfp4, pot4, dint4): every value is an fp16
  number with a zero low byte, so one `prmt` over two table registers decodes 4 magnitudes,
  one replicates the 4 sign bits into bytes, one lop3 merges, two `prmt` spread the bytes into
  fp16x2 lanes (decode16_tables.py): 17 instructions per word, as int4-sym;
- "sm-special" (razer4, nvfp4-razer): the same plus one `prmt` per 4 codes over a per-group
  table whose entry 0 is the special value (code 8 = sign 1, magnitude 0 reads it): 19 per
  word, no compare, select, load or branch per element; the table word is built once per group
  from the 2-bit metadata by one lop3 and one prmt (`group_program`);
- "table16" (nf4): four byte tables per 4 codes (high / low fp16 bytes, codes 0-7 / 8-15)
  merged by the code's bit 3: 25 per word; values are read rounded to fp16;
- "e2m1-seteq": RaZeR with specials that are not one fp16 byte (user `specials=`): E2M1 bits
  placed into fp16 (value * 2^-14), code 8 found by one `set.eq` on the lane 0x80FF and the
  special (-special * 2^-14, a per-group register) added by one fma, times +-2^14.
Table registers are set once per asm instance (`setup_program`). A prmt takes one immediate
table operand; the other (`movv`) must be a vector register, and ptxas keeps a known constant
in a uniform register copied before every prmt that reads it. So the kernel builds those once
before its loop, made opaque to ptxas (ORed with a runtime 0 shifted by laneid: OPAQUE_ASM),
and passes them in (`opaque_tables`).
All decoded values are exact in fp16 except nf4's (test_decode16 checks every byte value
against the formats' reference `dequantize`); scales are applied once per group, in fp32, to
the fp16x2 partial sum of at most 4 words (16 products per lane).
"""

from __future__ import annotations

import numpy as np

from qcompiler.codegen import decode16_tables as tables
from qcompiler.codegen.ptx_ops import (LUT_A_AND_B, LUT_A_AND_B_OR_C, LUT_A_OR_B, Op, prmt_select,
                                       render)
from qcompiler.codegen.decode_plan import DecodeFamily, DecodePlan

E2M1 = ((2, 1, True),)  # (EXP_BITS, MAN_BITS, SIGNED) the minifloat decode handles


def program_kind(plan: DecodePlan) -> str | None:
    """Which fp16x2 program decodes `plan`: "int" (magic number), "sm" (sign-magnitude byte
    table), "sm-special" (RaZeR through a special table), "e2m1-seteq" (RaZeR whose specials
    are not one fp16 byte: bit placement and a set.eq), "table16" (16 two-byte entries), or
    None (the fp32 GEMV serves M = 1 too)."""
    p = dict(plan.params)
    if plan.bits != 4 or plan.elems_per_unit != 2 or plan.unit_bytes != 1:
        return None
    if plan.family is DecodeFamily.INT:
        return "int" if p["XOR"] == 0 else None
    if plan.family is DecodeFamily.MINIFLOAT:
        if (p["EXP_BITS"], p["MAN_BITS"], p["SIGNED"]) not in E2M1:
            return None
        if p["SPECIAL_CODE"] == -1:
            return "sm"
        if p["SPECIAL_CODE"] != 8:
            return None
        if tables.special_words(plan) is not None:
            return "sm-special"
        try:
            [special_pair(p[f"SPECIAL_{i}"]) for i in range(4)]
        except ValueError:
            return None
        return "e2m1-seteq"
    if tables.magnitude_bytes(plan) is not None:
        return "sm"
    if tables.full_table(plan) is not None:
        return "table16"
    return None


def supported(plan: DecodePlan) -> bool:
    """Whether the fp16x2 GEMV decodes `plan` (else the fp32 GEMV serves M = 1 too)."""
    return program_kind(plan) is not None


def table_bytes(plan: DecodePlan) -> tuple[int, int] | None:
    """Sign-magnitude tables (dint4, and E2M1 / pot4 values): the two registers of the 8
    magnitudes' fp16 high bytes a `prmt` looks them up in (decode16_tables.magnitude_bytes)."""
    return tables.magnitude_bytes(plan)


def special_pair(value: float) -> int:
    """The set.eq program's operand of a special value: fp16 bits of -value * 2^-14, twice."""
    v = np.float16(-value * 2.0 ** -14)
    if float(v) != -value * 2.0 ** -14:
        raise ValueError(f"special value {value}: -value * 2^-14 is not exact in fp16")
    bits = int(np.array(v).view(np.uint16))
    return bits | (bits << 16)


def has_aux(plan: DecodePlan) -> bool:
    """A per-group operand: 1024 + zero (int, fp16x2) or the special value (RaZeR)."""
    return program_kind(plan) in ("int", "sm-special", "e2m1-seteq")


def aux_words(plan: DecodePlan) -> tuple[int, ...]:
    """RaZeR: the aux operand per metadata value (0..3), as the kernel passes it per group:
    the metadata itself for the special-table program (its group ops turn it into the table
    word), the fp16x2 special operand for the set.eq program."""
    if program_kind(plan) == "sm-special":
        return (0, 1, 2, 3)
    p = dict(plan.params)
    return tuple(special_pair(p[f"SPECIAL_{i}"]) for i in range(4))


def setup_program(plan: DecodePlan) -> list[Op]:
    """Ops run once per asm instance before the words: the table constants."""
    kind = program_kind(plan)
    if kind in ("sm", "sm-special"):
        t0, t1 = tables.magnitude_bytes(plan)  # type: ignore[misc]
        ops = [Op("movv", "t0", (t0,)), Op("mov", "t1", (t1,)), Op("mov", "z", (0,))]
        if kind == "sm-special":  # the 4 specials' high bytes, and the sign bytes
            ops += [Op("movv", "spec", (tables.special_bytes(plan),)),
                    Op("mov", "u1", (tables.SIGN_BYTES,))]
        return ops
    if kind == "table16":
        names = ("ha0", "ha1", "hb0", "hb1", "la0", "la1", "lb0", "lb1")
        return [Op("movv" if n.endswith("0") else "mov", n, (v,))
                for n, v in zip(names, tables.full_table(plan))]  # type: ignore[arg-type]
    return []


def group_program(plan: DecodePlan) -> list[Op]:
    """Ops run once per group (chain) on its `aux` operand before its words. RaZeR: the
    special table word n0 = [specials[meta], 0x80, 0x80, 0x80] by one prmt on the metadata."""
    if program_kind(plan) != "sm-special":
        return []
    return [Op("lop3", "ms", ("aux", 0x4440, 0), LUT_A_OR_B),  # byte 0 <- meta, 1..3 <- u1
            Op("prmt", "n0", ("spec", "u1", "ms"))]


def word_program(plan: DecodePlan) -> list[Op]:
    """Ops decoding word `w` and accumulating into `acc` with activations x0..x3 (and `aux`);
    they read the registers `setup_program` and `group_program` set (run those first)."""
    kind = program_kind(plan)
    ops: list[Op] = []
    if kind == "int":
        ops.append(Op("shr", "ws", ("w",), 4))
        for k in range(4):
            ops += [Op("prmt", "t", ("w", "ws"), prmt_select(k)),
                    Op("lop3", "t", ("t", 0x000F000F, 0x64006400), LUT_A_AND_B_OR_C),
                    Op("hsub2", "t", ("t", "aux")),
                    Op("hfma2", "acc", ("t", f"x{k}", "acc"))]
        return ops
    if kind == "e2m1-seteq":
        return _seteq_program()
    ops = [Op("lop3", "sel", ("w", 0x77777777, 0), LUT_A_AND_B),  # magnitude indices
           Op("shl", "w4", ("w",), 4),  # even codes' sign bits at the bytes' msb
           Op("shr", "selh", ("sel",), 16)]
    for h, s in enumerate(("sel", "selh")):
        ops.append(Op("prmt", "g", ("w4", "w"), tables.SIGNS[h]))  # 0xFF: sign bit set
        if kind == "table16":  # high and low bytes, codes 0-7 / 8-15 merged by g
            for plane, lo_hi in (("h", "vh"), ("l", "vl")):
                ops += [Op("prmt", "a", (f"{plane}a0", f"{plane}a1", s)),
                        Op("prmt", "b", (f"{plane}b0", f"{plane}b1", s)),
                        Op("lop3", lo_hi, ("g", "b", "a"), tables.LUT_MUX)]
            spread, srcs = tables.SPREAD_LO_HI, ("vl", "vh")
        else:
            ops.append(Op("prmt", "m", ("t0", "t1", s)))  # magnitudes' fp16 high bytes
            if kind == "sm-special":  # code 8 reads the special: entry 0 of (n0, 0x80808080)
                ops += [Op("prmt", "n", ("n0", "u1", s)),
                        Op("lop3", "v", ("g", "n", "m"), LUT_A_AND_B_OR_C)]
            else:
                ops.append(Op("lop3", "v", ("g", tables.SIGN_BYTES, "m"), LUT_A_AND_B_OR_C))
            spread, srcs = tables.SPREAD_HI, ("v", "z")
        for j in range(2):
            ops += [Op("prmt", "p", srcs, spread[j]),
                    Op("hfma2", "acc", ("p", f"x{2 * h + j}", "acc"))]
    return ops


def _seteq_program() -> list[Op]:
    """RaZeR with specials that are not one fp16 byte: E2M1 bits placed into fp16 (value *
    2^-14) times a +-2^14 from the sign; code 8 is exactly the lane 0x80FF once the junk
    nibbles are cleared, so one set.eq and one fma add -special * 2^-14 (aux) to it."""
    ops = [Op("shl", "w4", ("w",), 4),
           Op("lop3", "w4", ("w4", 0xF0F0F0F0, 0), LUT_A_AND_B),
           Op("lop3", "wm", ("w", 0xF0F0F0F0, 0), LUT_A_AND_B)]
    for k in range(4):
        ops += [Op("prmt", "a", ("w4", "wm"), prmt_select(k) | 0x0808),
                Op("hseteq", "e", ("a", 0x80FF80FF)),  # 1.0 where the code is 8
                Op("shr", "m", ("a",), 3),
                Op("lop3", "m", ("m", 0x0E000E00, 0), LUT_A_AND_B),
                Op("lop3", "s", ("a", 0x80008000, 0x74007400), LUT_A_AND_B_OR_C),
                Op("hfma2", "m", ("e", "aux", "m")),
                Op("hmul2", "t", ("m", "s")),
                Op("hfma2", "acc", ("t", f"x{k}", "acc"))]
    return ops


# ----------------------------------------------------------------------------- inline PTX


def opaque_tables(plan: DecodePlan) -> list[tuple[str, int]]:
    """(register, value) of the table constants that must live in vector registers (`movv`):
    the kernel builds them once before its loop (OPAQUE_ASM) and passes them in."""
    return [(op.dst, int(op.srcs[0])) for op in setup_program(plan) if op.name == "movv"]


# $1 | ($2 << laneid) with $2 = (stride_xm < 0) = 0 (torch strides are never negative): that
# is $1, but ptxas cannot prove it (a kernel argument, never specialized to a constant as an
# M of 1 would be) and laneid makes it non-uniform, so the value stays in one vector register
OPAQUE_ASM = "mov.u32 $0, %laneid; shl.b32 $0, $2, $0; or.b32 $0, $0, $1;"


def ptx(plan: DecodePlan, words_per_group: int) -> tuple[str, str]:
    """(asm, constraints) for `tl.inline_asm_elementwise(..., pack=4)`.

    Operands: $0-$3 the fp32 accumulators out; then per input 4 registers (one per word):
    w, x0 .. x3 (the word's activations as fp16x2 pairs), aux (if any), scale (fp32), acc in,
    then the `opaque_tables` values (the same in all 4).
    Words are chained in fp16x2 `words_per_group` at a time (4, or 2 for 16-code groups), each
    chain converted once, scaled and added to its first word's fp32 accumulator; the other
    accumulators pass through.
    """
    aux = has_aux(plan)
    regs = iter(range(4, 96))
    w_r, x_r = [f"${next(regs)}" for _ in range(4)], []
    for _ in range(4):
        x_r.append([f"${next(regs)}" for _ in range(4)])
    aux_r = [f"${next(regs)}" for _ in range(4)] if aux else None
    s_r = [f"${next(regs)}" for _ in range(4)]
    acc_r = [f"${next(regs)}" for _ in range(4)]
    tab_r = {}
    for name, _ in opaque_tables(plan):
        tab_r[name] = [f"${next(regs)}" for _ in range(4)][0]
    setup = [Op("mov", op.dst, (tab_r[op.dst],)) if op.name == "movv" else op
             for op in setup_program(plan)]
    group, prog = group_program(plan), word_program(plan)
    names = {"w", "s", "acc", "aux", "x0", "x1", "x2", "x3"}
    names |= {n for op in setup + group + prog for n in (op.dst, *op.srcs)
              if isinstance(n, str) and not n.startswith("$")}  # not the asm's operands
    lines = ["{", f".reg .b32 {', '.join(sorted(names))};",
             ".reg .b16 lo16, hi16;", ".reg .f32 flo, fhi;"]
    lines += [render(op) for op in setup]
    for i in range(4):
        if i % words_per_group == 0:
            lines.append("mov.b32 acc, 0;")
        lines += [f"mov.b32 w, {w_r[i]};"] + [f"mov.b32 x{k}, {x_r[k][i]};" for k in range(4)]
        if aux_r:
            lines.append(f"mov.b32 aux, {aux_r[i]};")
        if i % words_per_group == 0:
            lines += [render(op) for op in group]
        lines += [render(op) for op in prog]
        if i % words_per_group == words_per_group - 1:
            j = i - words_per_group + 1  # the chain's first word carries its result
            lines += ["mov.b32 {lo16, hi16}, acc;", "cvt.f32.f16 flo, lo16;",
                      "cvt.f32.f16 fhi, hi16;", "add.f32 flo, flo, fhi;",
                      f"fma.rn.f32 $" + str(j) + f", flo, {s_r[j]}, {acc_r[j]};"]
            lines += [f"mov.b32 ${r}, {acc_r[r]};" for r in range(j + 1, i + 1)]
    lines.append("}")
    cons = ",".join(["=f"] * 4 + ["r"] * (4 * (5 + aux)) + ["f"] * 8 + ["r"] * (4 * len(tab_r)))
    return "\n".join(lines), cons


"""Inline-PTX word decode for the tensor-core GEMM: 8 codes -> 8 fp16 weights * group scale.

The pure-Triton fp16 decode (gemm16_decode.py) leaves the pairing of 16-bit lanes to LLVM,
which pairs codes of different bytes and then shuffles them back with PRMT: ~4 SASS
instructions per code for int4. Here one asm block decodes one 32-bit word (8 codes) with the
fp16x2 bit placement the M = 1 GEMV introduced (decode16.py at the time of writing; kept here
as its own op list so the two kernels can evolve apart; the `Op` type and its rendering are
shared, codegen/ptx_ops.py): `prmt` puts the two nibbles of byte k
into the two halves of a register, `lop3` places them in fp16 bit patterns, fp16x2 math makes
them exact code values `t` (RaZeR's special code: one `set.eq` and one fma against a per-group
register the asm looks up from the 2-bit metadata: no table load, no branch; nf4: the M = 1
GEMV's 8-entry byte tables of its 16 values rounded to fp16, `_table16_ops`), and
`mul.rn.f16x2 o_k, t, sp` applies the group scale (nvfp4: the scale * 2^(14 - u) is the sign
multiplier itself, `folds_scale`). Every `t` is exact in fp16 and the scale is an exact fp16
number, so the one rounding of `t * scale` is fp16(reference): the same numbers the
pure-Triton decode gives, which the interpreter runs (USE_ASM=False) in its place (nf4: `t` is
fp16(v), not v, so the weight is fp16(fp16(v) * scale), `rounds_values`).

`program(plan)` is the op list; `ptx(plan)` renders it; gemm16_sim.emulate runs it in NumPy
for the exhaustive test (tests/codegen/test_gemm16.py: all 256 byte values x specials x
scales against the formats' `dequantize`; nf4 against fp16(fp16(v) * s)).
"""

from __future__ import annotations

import numpy as np

from qcompiler.codegen import decode16_tables
from qcompiler.codegen.ptx_ops import LUT_A_AND_B, LUT_A_AND_B_OR_C, Op, prmt_select, render
from qcompiler.codegen.decode_plan import DecodeFamily, DecodePlan, ScaleKind


def supported(plan: DecodePlan) -> bool:
    """4-bit formats with a bit-arithmetic or byte-table decode: int (offset binary, with or
    without zero points), E2M1 (RaZeR's special code 8 included), pot4, sign-magnitude tables
    (dint4), 16-entry tables whose values are finite in fp16 (nf4, `table16`)."""
    p = dict(plan.params)
    if plan.bits != 4 or plan.elems_per_unit != 2 or plan.unit_bytes != 1:
        return False
    if plan.family is DecodeFamily.INT:
        return p["XOR"] == 0
    if plan.family is DecodeFamily.MINIFLOAT:
        if (p["EXP_BITS"], p["MAN_BITS"], p["SIGNED"]) != (2, 1, True):
            return False
        if p["SPECIAL_CODE"] == 8:
            try:
                [special_pair(p[f"SPECIAL_{i}"]) for i in range(4)]
            except ValueError:
                return False
        return p["SPECIAL_CODE"] in (-1, 8)
    if plan.family is DecodeFamily.POT:
        return p["MAG_BITS"] == 3 and 1 <= 15 + p["E0"] - 7 and 15 + p["E0"] <= 30
    if plan.family is DecodeFamily.TABLE:
        return table_bytes(plan) is not None or table16(plan) is not None
    return False


def table16(plan: DecodePlan) -> tuple[int, ...] | None:
    """Tables that are not sign-magnitude fp16 bytes (nf4): the eight `prmt` table words of
    decode16_tables.full_table (fp16 high / low bytes of codes 0-7 and 8-15, each value
    rounded to fp16), or None (dint4 and the non-table families use their own programs)."""
    if plan.family is not DecodeFamily.TABLE or table_bytes(plan) is not None:
        return None
    return decode16_tables.full_table(plan)


def rounds_values(plan: DecodePlan) -> bool:
    """Whether the decode reads fp16-rounded table values (nf4: its float32 table is not exact
    in fp16), so a weight is fp16(fp16(v) * scale), not fp16(v * scale)."""
    return table16(plan) is not None and decode16_tables.rounds_values(plan)


def table_bytes(plan: DecodePlan) -> tuple[int, int] | None:
    """Sign-magnitude tables (dint4) whose 8 magnitudes are fp16 values with a zero low byte,
    magnitude 0 first: the two registers of fp16 high bytes a `prmt` looks them up in."""
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
    """RaZeR's per-group operand: fp16 bits of -value * 2^-14, in both halves."""
    v = np.float16(-value * 2.0 ** -14)
    if float(v) != -value * 2.0 ** -14:
        raise ValueError(f"special value {value}: -value * 2^-14 is not exact in fp16")
    bits = int(np.array(v).view(np.uint16))
    return bits | (bits << 16)


def _word_ops(plan: DecodePlan) -> list[Op]:
    """Decode word `w` into 4 fp16x2 registers t -> o0..o3 (codes 2k, 2k + 1 in pair k), each
    ending with an `out` op the caller turns into the scale multiply."""
    p = dict(plan.params)
    ops: list[Op] = []
    if plan.family is DecodeFamily.INT:  # (t & 0x000F000F) | 0x64006400 = 1024 + q, minus aux
        ops.append(Op("shr", "ws", ("w",), 4))
        for k in range(4):
            ops += [Op("prmt", "t", ("w", "ws"), prmt_select(k)),
                    Op("lop3", "t", ("t", 0x000F000F, 0x64006400), LUT_A_AND_B_OR_C),
                    Op("hsub2", "t", ("t", "aux")), Op("out", f"o{k}", ("t",))]
        return ops
    ops.append(Op("shl", "w4", ("w",), 4))
    if table16(plan) is not None:
        return ops + _table16_ops(table16(plan))  # type: ignore[arg-type]
    if plan.family is DecodeFamily.TABLE:  # 8 magnitudes by prmt, sign from the code's bit 3
        t0, t1 = table_bytes(plan)  # type: ignore[misc]
        ops += [Op("movv", "e", (t0,)), Op("mov", "m", (t1,))]  # e: see opaque_tables
        for k in range(4):
            ops += [Op("prmt", "a", ("w4", "w"), prmt_select(k)),  # signs at bits 15 / 31
                    Op("prmt", "s", ("w4", "w"), k | ((4 + k) << 4)),  # codes at nibbles 1, 3
                    Op("lop3", "s", ("s", 0x7070, 0), LUT_A_AND_B),  # magnitudes; others 0
                    Op("prmt", "t", ("e", "m", "s")),  # fp16 high bytes, low bytes 0
                    Op("lop3", "t", ("a", 0x80008000, "t"), LUT_A_AND_B_OR_C),
                    Op("out", f"o{k}", ("t",))]
        return ops
    special = plan.family is DecodeFamily.MINIFLOAT and p.get("SPECIAL_CODE") == 8
    if special:  # the group's -special * 2^-14 pair: halves 2 meta, 2 meta + 1 of a table
        h = [special_pair(p[f"SPECIAL_{i}"]) & 0xFFFF for i in range(4)]
        ops += [Op("movv", "tl", (h[0] | h[1] << 16,)), Op("mov", "th", (h[2] | h[3] << 16,)),
                Op("mad", "e", ("meta", 0x2222, 0x1010)),  # selector bytes 2m, 2m+1, 2m, 2m+1
                Op("prmt", "aux", ("tl", "th", "e"))]
        # clear the junk nibbles: a lane is then exactly (code << 12) | 0x00 or 0xFF
        ops += [Op("lop3", "w4", ("w4", 0xF0F0F0F0, 0), LUT_A_AND_B),
                Op("lop3", "wm", ("w", 0xF0F0F0F0, 0), LUT_A_AND_B)]
    for k in range(4):
        if special:  # low bytes: sign-replicated code bytes, so code 8 is exactly 0x80FF
            ops += [Op("prmt", "a", ("w4", "wm"), prmt_select(k) | 0x0808),
                    Op("hseteq", "e", ("a", 0x80FF80FF))]  # 1.0 where the code is 8
        else:  # code 2k / 2k + 1 at bits 12-15 / 28-31
            ops.append(Op("prmt", "a", ("w4", "w"), prmt_select(k)))
        if plan.family is DecodeFamily.MINIFLOAT:  # |v| * 2^-14 placed, times +-2^14
            ops += [Op("shr", "m", ("a",), 3),
                    Op("lop3", "m", ("m", 0x0E000E00, 0), LUT_A_AND_B),
                    Op("lop3", "s", ("a", 0x80008000, 0x74007400), LUT_A_AND_B_OR_C)]
            if special:  # code 8: magnitude 0 + (-special * 2^-14), times -2^14 = special
                ops.append(Op("hfma2", "m", ("e", "aux", "m")))
            ops.append(Op("hmul2", "t", ("m", "s")))
        else:  # pot: +-2^(E0 - m), exponent field 15 + E0 - m
            base = (15 + p["E0"]) << 10
            ops += [Op("shr", "m", ("a",), 2),
                    Op("lop3", "m", ("m", 0x1C001C00, 0), LUT_A_AND_B),
                    Op("sub", "m", (base | (base << 16), "m")),
                    Op("lop3", "t", ("a", 0x80008000, "m"), LUT_A_AND_B_OR_C)]
        ops.append(Op("out", f"o{k}", ("t",)))
    return ops


TABLE16_REGS = ("ha0", "ha1", "hb0", "hb1", "la0", "la1", "lb0", "lb1")


def _table16_ops(words: tuple[int, ...]) -> list[Op]:
    """16 arbitrary fp16 values (nf4), 4 codes per half word h (codes 4h .. 4h + 3) with the
    M = 1 GEMV's byte tables (decode16_tables): one `prmt` per table of 8 bytes looks up 4
    codes, so the high bytes of codes 0-7 and of 8-15 are two `prmt`, merged by the code's
    bit 3 (a byte mask from one more `prmt`) in one `lop3`; the same for the low bytes; two
    `prmt` interleave low and high bytes into the fp16x2 pairs (codes 4h + 2j, 4h + 2j + 1).
    Per word: 3 + 2 x 9 = 21 before the 4 scale multiplies. Expects w4 = w << 4."""
    # a prmt takes one table word as an immediate; the other ("movv") must be a vector
    # register, which the kernel builds once before its loop (`opaque_tables`)
    ops = [Op("movv" if r.endswith("0") else "mov", r, (v,)) for r, v in zip(TABLE16_REGS, words)]
    ops += [Op("lop3", "sel", ("w", 0x77777777, 0), LUT_A_AND_B),  # indices, no replicate bit
            Op("shr", "selh", ("sel",), 16)]  # prmt reads selector nibbles 0-3 only
    for h, sel in enumerate(("sel", "selh")):
        ops.append(Op("prmt", "g", ("w4", "w"), decode16_tables.SIGNS[h]))  # 0xFF: code >= 8
        for plane, dst in (("h", "vh"), ("l", "vl")):
            ops += [Op("prmt", "a", (f"{plane}a0", f"{plane}a1", sel)),  # codes 0-7
                    Op("prmt", "b", (f"{plane}b0", f"{plane}b1", sel)),  # codes 8-15
                    Op("lop3", dst, ("g", "b", "a"), decode16_tables.LUT_MUX)]
        for j in range(2):
            ops += [Op("prmt", "t", ("vl", "vh"), decode16_tables.SPREAD_LO_HI[j]),
                    Op("out", f"o{2 * h + j}", ("t",))]
    return ops


def folds_scale(plan: DecodePlan) -> bool:
    """E2M1 codes with minifloat (E4M3) scales: the scale, times 2^(14 - u) with the scale
    codec's 2^u = UNBIAS left for the fp32 accumulator, replaces the constant 2^14 of the
    sign multiplier, so one multiply both signs, unbiases and scales (`scale_folded`)."""
    return plan.family is DecodeFamily.MINIFLOAT and plan.scale is ScaleKind.MINIFLOAT


def program(plan: DecodePlan) -> list[Op]:
    """The word program with each pair's `out` turned into `o_k = t * sp` (inputs w, aux the
    per-group pair, sp the scale pair); with `folds_scale` the sign multiplier is sp itself."""
    out: list[Op] = []
    fold = folds_scale(plan)
    for op in _word_ops(plan):
        if op.name == "out" and fold:  # the pair's last multiply already scaled it
            last = out.pop()
            out.append(Op(last.name, op.dst, last.srcs, last.imm))
        elif op.name == "out":
            out.append(Op("hmul2", op.dst, ("t", "sp")))
        elif fold and op.name == "lop3" and op.srcs[2] == 0x74007400:
            out.append(Op("lop3", op.dst, (op.srcs[0], op.srcs[1], "sp"), op.imm))
        else:
            out.append(op)
    return out


def aux_input(plan: DecodePlan) -> str | None:
    """The per-group integer input: "aux" = 1024 + zero (+ offset) as an fp16x2 pair (int),
    "meta" = RaZeR's special-value index (the asm looks its pair up), None otherwise."""
    if plan.family is DecodeFamily.INT:
        return "aux"
    if plan.family is DecodeFamily.MINIFLOAT and dict(plan.params)["SPECIAL_CODE"] == 8:
        return "meta"
    return None


def opaque_tables(plan: DecodePlan) -> list[tuple[str, int]]:
    """(register, value) of the table words that must sit in vector registers (`movv`, nf4's
    4 of 8): ptxas keeps a known constant in a uniform register and copies it to a vector
    register before every `prmt` that reads it (about 0.8 instructions per code for nf4), so
    the kernel builds them once before its loop, opaque to ptxas (decode16.OPAQUE_ASM), and
    passes them in as operands after s."""
    return [(op.dst, int(op.srcs[0])) for op in program(plan) if op.name == "movv"]


def ptx(plan: DecodePlan) -> tuple[str, str]:
    """(asm, constraints) for `tl.inline_asm_elementwise(..., pack=1)`: outputs $0-$7 the 8
    fp16 weights (code j = nibble j of the word), inputs w, [aux], s (the fp16 scale), then
    the `opaque_tables` words."""
    aux = aux_input(plan)
    tabs = opaque_tables(plan)
    regs = iter(range(8, 16 + len(tabs)))
    w_r = f"${next(regs)}"
    aux_r = f"${next(regs)}" if aux else None
    s_r = f"${next(regs)}"
    tab_r = {name: f"${next(regs)}" for name, _ in tabs}
    names = {"w", "s", "sp"} | ({aux} if aux else set())
    for op in program(plan):
        names |= {op.dst} | {v for v in op.srcs if isinstance(v, str)}
    lines = ["{", f".reg .b32 {', '.join(sorted(names))};",
             f"mov.b32 w, {w_r};", f"mov.b32 sp, {{{s_r}, {s_r}}};"]
    if aux_r:
        lines.append(f"mov.b32 {aux}, {aux_r};")
    prog, consts = _stage_constants([Op("mov", op.dst, (tab_r[op.dst],)) if op.name == "movv"
                                     else op for op in program(plan)])
    lines[1] = lines[1][:-1] + "".join(f", {c}" for c in consts) + ";"
    lines += [f"mov.b32 {c}, {v:#010x};" for c, v in consts.items()]
    lines += [render(op) for op in prog]
    lines += [f"mov.b32 {{${2 * k}, ${2 * k + 1}}}, o{k};" for k in range(4)]
    lines.append("}")
    cons = ",".join(["=h"] * 8 + ["r"] + (["r"] if aux else []) + ["h"] + ["r"] * len(tabs))
    return "\n".join(lines), cons


def _stage_constants(prog: list[Op]) -> tuple[list[Op], dict[str, int]]:
    """A SASS LOP3 takes one immediate: the other constant of a two-immediate lop3 goes to a
    register set once at the top of the block (ptxas then keeps it across the loop instead of
    re-materializing it before every use)."""
    consts: dict[str, int] = {}
    names: dict[int, str] = {}
    out = []
    for op in prog:
        if op.name == "lop3" and op.imm == LUT_A_AND_B and op.srcs[2] == 0:
            op = Op("and", op.dst, op.srcs[:2])  # a & b: a plain and.b32 with its immediate
        elif op.name == "lop3" and sum(isinstance(v, int) for v in op.srcs) == 2:
            srcs = list(op.srcs)
            i = max(j for j, v in enumerate(srcs) if isinstance(v, int))
            val = int(srcs[i])
            names.setdefault(val, f"k{len(names)}")
            consts[names[val]] = val
            srcs[i] = names[val]
            op = Op(op.name, op.dst, tuple(srcs), op.imm)
        out.append(op)
    return out, consts


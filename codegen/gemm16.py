"""Tensor-core GEMM for 4-bit formats (M > 4): codes decoded straight to fp16 in registers.

The fp32 GEMM (gemm.py, still selectable with `QC_GEMM=fp32`) decodes every code to fp32,
converts it, and splits K into nibble planes with strided activation loads: 10-25 SASS
instructions per code at M = 16 and 256 on sm_90. Here:
- the codes are read as int32 words (8 codes), a [BLOCK_N, BLOCK_K / 8] tile per iteration
  (four words, one 128-bit load, per thread), and each word is decoded by one inline-PTX block
  (gemm16_asm.py: fp16x2 bit placement, the group scale in one fp16x2 multiply per pair) into
  8 fp16 weights; under TRITON_INTERPRET the same values come from plain Triton ops
  (gemm16_decode.py: both decodes are exact, so they agree bit for bit);
- the 8 nibble planes are interleaved by joins into the [BLOCK_N, BLOCK_K] fp16 tile (code
  8 w + j at column 8 w + j), so x is read contiguously, and `acc = dot(x, trans(w), acc)`:
  on sm_90 a wgmma whose weight operand Triton stores once to shared memory;
- at M <= 16 the MMA tile is padded to 64 rows (wgmma's M; rows past BLOCK_M read x = 0 and
  are folded away after the loop);
- table words a `prmt` needs in vector registers (nf4, dint4, RaZeR: gemm16_asm.opaque_tables)
  are built once before the loop, opaque to ptxas, and passed to every asm block;
- group data is loaded once per tile and row when the tile lies in one group (BLOCK_K <=
  group), else once per group and repeated for its words in registers (g16_expand); the
  scale codec's 2^u (nvfp4) and the per-tensor fp32 scale multiply the fp32 accumulator.

Numerics: every weight is fp16(reference) exactly (gemm16_decode.py says why; the tests check
every byte value), except nf4's: its float32 table is read rounded to fp16, as at M = 1, so
its weight is fp16(fp16(v) * scale), and the 2^-11 below is 2^-10 + 2^-22 for nf4. The
fp16 x fp16 products are exact in the MMA's fp32 accumulator, which rounds each addition in
fp32; y is rounded once to fp16. Hence, against the exact x W:
    |y - x W| <= (2^-11 + K 2^-24) sum_k |x_k w_k| + 2^-11 |y|
(2^-11: the weight's fp16 rounding; K 2^-24: fp32 accumulation in any order). Only fp16
activations use this kernel; bf16 / fp32 x and the formats it does not decode run gemm.py.
"""

from __future__ import annotations

from string import Template

import numpy as np

from qcompiler.codegen import decode16, decode16_tables, epilogue, gemm16_asm, kernel_abi
from qcompiler.codegen.decode_plan import DecodeFamily, DecodePlan, ScaleKind

KERNEL = Template(kernel_abi.signature('GROUP_M', 'USE_ASM') + '''\
    """y = x @ W^T as (W x^T)^T, 4-bit codes decoded to fp16 in registers (${format})."""
    ROW_WORDS: tl.constexpr = K // 8  # int32 words (8 codes) per weight row
    BLOCK_W: tl.constexpr = BLOCK_K // 8  # words per row per K tile
    GROUPS: tl.constexpr = K // GROUP_SIZE
    NUM_PID_N: tl.constexpr = (N + BLOCK_N - 1) // BLOCK_N
    MMA_M: tl.constexpr = BLOCK_M if BLOCK_M >= 64 else 64  # wgmma's M

    # grouped program order: GROUP_M row tiles share each weight tile while it is in L2
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    group_id = pid // (GROUP_M * NUM_PID_N)
    first_m = group_id * GROUP_M
    rows_in_group = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * NUM_PID_N)) % rows_in_group
    pid_n = (pid % (GROUP_M * NUM_PID_N)) // rows_in_group

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = tl.arange(0, MMA_M)  # the MMA tile's rows; those past BLOCK_M read x = 0
    offs_mm = pid_m * BLOCK_M + rows
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_w = tl.arange(0, BLOCK_W)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    mm_mask = (offs_mm < M) & (rows < BLOCK_M)
    n_mask = offs_n < N
    w_rows = codes_ptr.to(tl.pointer_type(tl.int32)) + offs_n[:, None] * ROW_WORDS
    x_rows = x_ptr + offs_mm[:, None] * stride_xm  # [MMA_M, 1]
    g_rows = offs_n[:, None] * GROUPS  # [BLOCK_N, 1]

${tables}    acc = tl.zeros((MMA_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(pid_k * BLOCK_K, K, SPLIT_K * BLOCK_K):
        wd = tl.max_contiguous(tl.multiple_of(k0 // 8 + offs_w, BLOCK_W), BLOCK_W)
        w_mask = n_mask[:, None] & (wd < ROW_WORDS)[None, :]
        words = tl.load(w_rows + wd[None, :], mask=w_mask, other=0)  # [BLOCK_N, BLOCK_W] int32
        # group data: one per row when the tile lies in one group, else one per group
        if BLOCK_K <= GROUP_SIZE:
            g_offs = g_rows + k0 // GROUP_SIZE
            g_mask = n_mask[:, None]
        else:  # loaded per group, expanded to the words after decoding (g16_expand)
            gg = k0 // GROUP_SIZE + tl.arange(0, BLOCK_K // GROUP_SIZE)
            g_offs = g_rows + gg[None, :]
            g_mask = n_mask[:, None] & (gg < GROUPS)[None, :]
${group_data}
${decode}
        k = k0 + offs_k
        xk = tl.load(x_rows + k[None, :], mask=mm_mask[:, None] & (k < K)[None, :], other=0.0)
        acc = tl.dot(xk, tl.trans(w), acc)

    if MMA_M > BLOCK_M:  # fold the zero rows away: [BLOCK_M, BLOCK_N]
        acc = tl.sum(acc.reshape(MMA_M // BLOCK_M, BLOCK_M, BLOCK_N), axis=0)
    if HAS_GLOBAL_SCALE:  # the per-tensor scale (and a scale codec's 2^u) never round a weight
        acc = acc * (tl.load(gscale_ptr).to(tl.float32) * ${post})
    elif ${post} != 1.0:
        acc = acc * ${post}
${epilogue}''')

# per-group operands (fp16 [BLOCK_N, 1] or [BLOCK_N, BLOCK_B]) by family and scale kind
SCALE = {
    ScaleKind.FLOAT: "        s = tl.load(scales_ptr + g_offs, mask=g_mask, other=0).to(tl.float16)",
    # E8M0 2^(e - 127) -> fp32 by placing e in the exponent field -> fp16 (exact in [-24, 15])
    ScaleKind.E8M0: ("        s_raw = tl.load(scales_ptr + g_offs, mask=g_mask, other=0)\n"
                     "        s = (s_raw.to(tl.int32) << 23).to(tl.float32, bitcast=True)"
                     ".to(tl.float16)"),
    # E4M3: s * 2^(14 - u), the E2M1 placement's 2^14 folded in, 2^u left for the accumulator
    ScaleKind.MINIFLOAT: (
        "        s_raw = tl.load(scales_ptr + g_offs, mask=g_mask, other=0).to(tl.int16)\n"
        "        s = h16_minifloat_scale(s_raw, EXP_BITS=${exp}, MAN_BITS=${man}, "
        "UNBIAS=16384.0)"),
}


# per-group values -> per word (a group covers GROUP_SIZE // 8 words), when a tile holds groups
EXPAND = ("        if BLOCK_K > GROUP_SIZE:\n"
          "            {v} = g16_expand({v}, GROUP_SIZE // 8)")


def supported(plan: DecodePlan) -> bool:
    """Whether this kernel decodes `plan` (else the fp32 GEMM runs every M > 4)."""
    return gemm16_asm.supported(plan)


def render(name: str, plan: DecodePlan) -> str:
    """The fp16-decode GEMM kernel for `plan` (supported(plan) must hold), named `name`."""
    p = dict(plan.params)
    sp = dict(plan.scale_params)
    lines = [SCALE[plan.scale].replace("${exp}", str(sp.get("EXP_BITS"))).replace(
        "${man}", str(sp.get("MAN_BITS"))).replace("${unbias}", repr(sp.get("UNBIAS"))),
        EXPAND.format(v="s")]
    fam = plan.family
    asm_args = ["words"]
    if fam is DecodeFamily.INT:
        off = p["OFFSET"]
        if plan.has_zero:
            lines += ["        z = tl.load(zeros_ptr + g_offs, mask=g_mask, other=0).to(tl.int32)",
                      EXPAND.format(v="z"),
                      "        aux = (z + (1024 + %d)).to(tl.float16)  # 1024 + zero + offset" % off,
                      "        aux32 = (z + (0x6400 + %d)) * 0x10001  # the same, fp16x2 bits" % off]
        else:
            lines += [f"        aux = tl.cast({1024.0 + off!r}, tl.float16)",
                      f"        aux32 = tl.full(s.shape, {(0x6400 + off) * 0x10001}, tl.int32)"]
        asm_args.append("aux32")
        dec = "h16_int({c}, s, aux)"
    elif fam is DecodeFamily.MINIFLOAT:
        special = p["SPECIAL_CODE"] == 8
        f1 = 1.0 if gemm16_asm.folds_scale(plan) else 16384.0  # 2^14 folded into s or not
        lines.append(f"        f1 = tl.cast({f1!r}, tl.float16)")
        if special:
            sv = [repr(float(p[f"SPECIAL_{i}"])) for i in range(4)]
            lines += [
                "        meta = tl.load(meta_ptr + g_offs, mask=g_mask, other=0).to(tl.int32)",
                EXPAND.format(v="meta"),
                "        hi_m = (meta & 2) != 0",
                "        lo_m = (meta & 1) != 0",
                f"        sv = tl.where(hi_m, tl.where(lo_m, {sv[3]}, {sv[2]}), "
                f"tl.where(lo_m, {sv[1]}, {sv[0]}))",
                "        # special * scale, rounded once (the asm looks its pair up from meta)",
                "        aux = (sv * (s.to(tl.float32) * f1.to(tl.float32) * 2.0 ** -14))"
                ".to(tl.float16)",
                "        aux32 = tl.broadcast_to(meta, words.shape)"]
            asm_args.append("aux32")
        else:
            lines.append("        aux = tl.cast(0.0, tl.float16)")
        dec = f"h16_e2m1({{c}}, f1, s, aux, SPECIAL={special})"
    elif fam is DecodeFamily.POT:
        dec = f"h16_pot({{c}}, s, BASE={15 + p['E0']})"
    elif gemm16_asm.table16(plan) is not None:  # nf4: the values rounded to fp16, as the asm
        vals = decode16_tables.code_values(plan) or []
        dec = "h16_table16({c}, s, " + ", ".join(repr(float(np.float16(v))) for v in vals) + ")"
    else:
        dec = "h16_dint({c}, s)"
    asm_args.append("tl.broadcast_to(s, words.shape)")
    asm_args += [f"tl.broadcast_to(tab_{r}, words.shape)"
                 for r, _ in gemm16_asm.opaque_tables(plan)]
    asm = (f"            {', '.join(f'p{j}' for j in range(8))} = tl.inline_asm_elementwise(\n"
           f"                ASM16_{plan.ident}, CONSTRAINTS16_{plan.ident},\n"
           f"                [{', '.join(asm_args)}],\n"
           "                dtype=(tl.float16,) * 8, is_pure=True, pack=1)")
    decode = ("        if USE_ASM:  # gemm16_asm.py: fp16x2 bit placement, one word per asm block\n" + asm
              + "\n        else:  # the same values in plain Triton (TRITON_INTERPRET)\n"
              + _decode_planes(dec) + "\n" + _interleave())
    post = dict(plan.scale_params).get("UNBIAS", 1.0) if gemm16_asm.folds_scale(plan) else 1.0
    return KERNEL.substitute(name=name, format=plan.format, group_data="\n".join(lines),
                             tables=_tables(plan),
                             decode=decode, post=repr(float(post)),
                             epilogue=epilogue.render("acc"))


def render_asm(plan: DecodePlan) -> str:
    """The module-level asm text and constraints the kernel's USE_ASM branch uses."""
    asm, cons = gemm16_asm.ptx(plan)
    return (f'ASM16_{plan.ident} = tl.constexpr("""\n{asm}\n""")\n'
            f"CONSTRAINTS16_{plan.ident} = tl.constexpr({cons!r})\n"
            f"OPAQUE16_{plan.ident} = tl.constexpr({decode16.OPAQUE_ASM!r})")


def _tables(plan: DecodePlan) -> str:
    """Kernel lines building the asm's vector-register table words once, before the loop: one
    [1, 1] value each (one register per thread, broadcast to the word tile), ORed with a
    runtime zero ptxas cannot see through (decode16.OPAQUE_ASM), so it is not a uniform
    constant copied before every use."""
    tabs = gemm16_asm.opaque_tables(plan)
    if not tabs:
        return ""
    lines = ["    opaque_zero = tl.zeros((1, 1), tl.int32) + (stride_xm < 0).to(tl.int32)"]
    for reg, value in tabs:
        v = value - (1 << 32) if value >= 1 << 31 else value  # an int32 literal
        lines += [f"    tab_{reg} = tl.full((1, 1), {v}, tl.int32)",
                  "    if USE_ASM:",
                  f"        tab_{reg} = tl.inline_asm_elementwise(OPAQUE16_{plan.ident}, "
                  f'"=r,r,r", [tab_{reg}, opaque_zero], dtype=tl.int32, is_pure=True, pack=1)']
    return "".join(line + "\n" for line in lines)


def _decode_planes(dec: str) -> str:
    """Pure-Triton decode of the word tile's 8 nibble planes p0..p7 (nibble j = code 8 w + j)."""
    lines = ["            c16 = words.to(tl.int16)", "            c16h = (words >> 16).to(tl.int16)"]
    for j in range(8):
        src = "c16" if j < 4 else "c16h"
        sh = 4 * (j % 4)
        c = f"({src} >> {sh}) & 15" if sh else f"{src} & 15"
        lines.append(f"            p{j} = " + dec.format(c=c))
    return "\n".join(lines)


def _interleave() -> str:
    """Planes -> [BLOCK_N, BLOCK_K] in K order. `tl.join` appends a minor axis, so joining
    planes that differ in the top index bit first, then the middle, then the low bit, gives
    axes (j2, j1, j0) and the reshape puts code 8 w + j at column 8 w + j."""
    lines = [f"        q{j} = tl.join(p{j}, p{j + 4})" for j in range(4)]
    lines += [f"        r{j} = tl.join(q{j}, q{j + 2})" for j in range(2)]
    lines.append("        w = tl.join(r0, r1).reshape(BLOCK_N, BLOCK_K)")
    return "\n".join(lines)

"""fp16x2 GEMV template: the M = 1 decode kernel for 4-bit formats (decode16.py does the math).

At M = 1 the weight stream must not wait on the issue slots: an H200 needs under ~4.2
instructions per 4-bit code to stay memory-bound. The fp32 GEMV (gemv.py) spends ~4 per code on
fp16->fp32 converts, the scale multiply and the FMA alone, so this kernel keeps the math in
fp16x2 (two codes per instruction) and applies the scale once per group:
- weights are read as int32 words, 4 consecutive words per thread (a [rows, chunks, 4] tile: one
  128-bit load), each word = 8 codes;
- the activations are read as fp16x2 pairs, two per 64-bit load, straight in the weight
  tile's shape, so they need no shared memory and no barrier (a thread's rows share its
  registers);
- one inline-asm instance per 4 words decodes (decode16.word_program), chains `fma.rn.f16x2`
  over at most one group (16 products per lane), converts once to fp32 and does
  `acc += scale * partial`; the zero point / RaZeR special value is one per-group register;
- the asm's table registers that a `prmt` cannot take as an immediate are built once before
  the loop, opaque to ptxas (decode16.OPAQUE_ASM), so they stay in vector registers;
- whole tiles (N % BLOCK_N == 0, K % BLOCK_K == 0) load without masks;
- group data is loaded per (row, chunk), i.e. once per group per thread; the fp32 accumulator
  tile is reduced across lanes once, after the loop; split-K partials meet in the
  epilogue's workspace (epilogue.py).
Under TRITON_INTERPRET the launcher passes USE_ASM=False and the same program runs as plain
Triton ops (decode16_sim.triton_source). Needs fp16 activations, M == 1, K % 32 == 0 and a
group size of 16 or a multiple of 32; the launcher falls back to the fp32 GEMV otherwise, or
when QC_GEMV=fp32 is set (for comparisons).
"""

from __future__ import annotations

from string import Template

from qcompiler.codegen import decode16, epilogue, kernel_abi
from qcompiler.codegen.decode16_sim import twin_name
from qcompiler.codegen.decode_plan import DecodeFamily, DecodePlan

KERNEL = Template(kernel_abi.signature('USE_ASM') + '''\
    """y[0, n] = sum_k x[0, k] * W[n, k], fp16x2 decode and dot (${format})."""
    WORDS: tl.constexpr = K // 8  # int32 words (8 codes) per weight row
    CHUNKS: tl.constexpr = BLOCK_K // 32  # 4-word chunks per K tile
    GROUPS: tl.constexpr = K // GROUP_SIZE
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, 1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    # [1, CHUNKS, 4] word offsets inside a K tile: word c * 4 + j
    tile_c = tl.arange(0, CHUNKS)[None, :, None] * 4
    tile_w = tile_c + tl.arange(0, 4)[None, None, :]
    tile_g = (tl.arange(0, 4) // 2 * 2)[None, None, :]  # each word's group's first word
    n3 = offs_n[:, None, None]
    w_rows = codes_ptr.to(tl.pointer_type(tl.int32)) + n3 * WORDS  # [BLOCK_N, 1, 1]
    x_quads = x_ptr.to(tl.pointer_type(tl.int64))  # word w's 4 fp16x2 pairs: 2w, 2w + 1
    g_rows = n3 * GROUPS
    if HAS_GLOBAL_SCALE:
        gscale = tl.load(gscale_ptr).to(tl.float32)
    else:
        gscale = 1.0

    # whole tiles only (N % BLOCK_N == 0, K % BLOCK_K == 0): no masks, so no zero-filled
    # registers or predicated loads in the loop
    EVEN: tl.constexpr = (N % BLOCK_N == 0) & (K % BLOCK_K == 0)
${tables}    acc = tl.zeros((BLOCK_N, CHUNKS, 4), dtype=tl.float32)
    for w0 in range(pid_k * (BLOCK_K // 8), WORDS, SPLIT_K * (BLOCK_K // 8)):
        w_idx = w0 + tile_w  # [1, CHUNKS, 4]
        if GROUP_SIZE >= 32:  # group data once per (row, group): per chunk (one group each)
            g_idx = w0 + tile_c  # [1, CHUNKS, 1]: each chunk's first word
        else:  # 16-code groups: words 2j and 2j + 1 share one (the same address twice)
            g_idx = w0 + tile_c + tile_g
        if EVEN:
            k_mask, mask, g_mask, other = None, None, None, None
        else:
            k_mask = w_idx < WORDS
            mask = n_mask[:, None, None] & k_mask
            g_mask = n_mask[:, None, None] & (g_idx < WORDS)
            other = 0
        words = tl.load(w_rows + w_idx, mask=mask, other=other)
        # a word's activation pairs 0, 1 and 2, 3 as one 64-bit load each, halves split for free
        x01 = tl.load(x_quads + w_idx * 2, mask=k_mask, other=other)
        x23 = tl.load(x_quads + w_idx * 2 + 1, mask=k_mask, other=other)
        x0, x1 = x01.to(tl.int32), (x01 >> 32).to(tl.int32)
        x2, x3 = x23.to(tl.int32), (x23 >> 32).to(tl.int32)
        g_offs = g_rows + (g_idx * 8) // GROUP_SIZE
        scale_raw = tl.load(scales_ptr + g_offs, mask=g_mask, other=other)
${group_data}
        scale = tl.broadcast_to(scale, words.shape)
        aux = tl.broadcast_to(aux, words.shape)
        acc = ${dot_fn}(words, x0, x1, x2, x3, aux, scale, acc${tab_args}, USE_ASM)

    y = tl.sum(tl.sum(acc, axis=2), axis=1)[None, :]  # [1, BLOCK_N]
${epilogue}''')

GROUP_DATA = {
    "scale": "        scale = ${scale_expr}",
    "none": "        aux = scale_raw.to(tl.int32) * 0",
    "zero": ("        zero_raw = tl.load(zeros_ptr + g_offs, mask=g_mask, other=other)\n"
             "        aux = (0x6400 + ${offset} + zero_raw.to(tl.int32)) * 0x10001"),
    "offset": "        aux = tl.full(scale.shape, (0x6400 + ${offset}) * 0x10001, tl.int32)",
    "meta": "        aux = tl.load(meta_ptr + g_offs, mask=g_mask, other=other).to(tl.int32)",
    "special": ("        meta = tl.load(meta_ptr + g_offs, mask=g_mask, other=other).to(tl.int32)\n"
                "        aux = tl.where((meta & 2) != 0, tl.where((meta & 1) != 0, ${s3}, ${s2}),\n"
                "                       tl.where((meta & 1) != 0, ${s1}, ${s0}))"),
}

DOT = Template('''\
@triton.jit
def ${name}(words, x0, x1, x2, x3, aux, scale, acc${tab_args}, USE_ASM: tl.constexpr):
    """acc + scale * (${format} words . activations): inline PTX on a GPU, Triton twin otherwise."""
    if USE_ASM:
        out = tl.inline_asm_elementwise(
            ASM_${ident}, CONSTRAINTS_${ident},
            [words, x0, x1, x2, x3${aux_arg}, scale, acc${tab_args}], dtype=tl.float32,
            is_pure=True, pack=4)
    else:
        out = ${twin}(words, x0, x1, x2, x3, aux, scale, acc)
    return out''')


def dot_fn_name(plan: DecodePlan) -> str:
    return f"dot16_{plan.ident}"


def render(name: str, plan: DecodePlan, scale_expr: str, group_size: int) -> str:
    """The fp16x2 GEMV kernel for `plan`, named `name`."""
    parts = [Template(GROUP_DATA["scale"]).substitute(scale_expr=scale_expr)]
    p = dict(plan.params)
    if plan.family is DecodeFamily.INT:
        key = "zero" if plan.has_zero else "offset"
        parts.append(Template(GROUP_DATA[key]).substitute(offset=p["OFFSET"]))
    elif decode16.program_kind(plan) == "sm-special":
        parts.append(GROUP_DATA["meta"])
    elif decode16.has_aux(plan):
        parts.append(Template(GROUP_DATA["special"]).substitute(
            {f"s{i}": _int32(v) for i, v in enumerate(decode16.aux_words(plan))}))
    else:
        parts.append(GROUP_DATA["none"])
    return KERNEL.substitute(name=name, format=plan.format, group_data="\n".join(parts),
                             dot_fn=dot_fn_name(plan), epilogue=epilogue.render("y"),
                             tables=_tables(plan), tab_args=_tab_args(plan))


def _tables(plan: DecodePlan) -> str:
    """Kernel lines building the asm's vector-register tables once, before the loop."""
    lines = []
    if decode16.opaque_tables(plan):  # strides are never negative: 0, but not provably
        lines.append("    opaque_zero = tile_w * 0 + (stride_xm < 0).to(tl.int32)")
    for reg, value in decode16.opaque_tables(plan):
        lines += [f"    tab_{reg} = tl.full(tile_w.shape, {_int32(value)}, tl.int32)",
                  "    if USE_ASM:  # opaque to ptxas: a vector register, not a uniform one",
                  f"        tab_{reg} = tl.inline_asm_elementwise(OPAQUE_ASM_{plan.ident}, "
                  f'"=r,r,r", [tab_{reg}, opaque_zero],',
                  "            dtype=tl.int32, is_pure=True, pack=1)"]
    return "".join(line + "\n" for line in lines)


def _tab_args(plan: DecodePlan) -> str:
    return "".join(f", tab_{reg}" for reg, _ in decode16.opaque_tables(plan))


def render_dot(plan: DecodePlan, group_size: int) -> str:
    """The asm text / constraints constants and the asm-or-twin dispatch function."""
    asm, cons = decode16.ptx(plan, words_per_group=min(4, group_size // 8))
    aux_arg = ", aux" if decode16.has_aux(plan) else ""
    return (f'ASM_{plan.ident} = tl.constexpr("""\n{asm}\n""")\n'
            f"CONSTRAINTS_{plan.ident} = tl.constexpr({cons!r})\n"
            f"OPAQUE_ASM_{plan.ident} = tl.constexpr({decode16.OPAQUE_ASM!r})\n\n\n"
            + DOT.substitute(name=dot_fn_name(plan), format=plan.format, ident=plan.ident,
                             aux_arg=aux_arg, twin=twin_name(plan), tab_args=_tab_args(plan)))


def _int32(v: int) -> int:
    """A 32-bit pattern as a signed int32 literal (so Triton keeps it int32, not int64)."""
    return v - (1 << 32) if v >= 1 << 31 else v

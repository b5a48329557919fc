# The fp16x2 M = 1 GEMV in emitted files: the decode's shape. RaZeR's asm is straight-line
# byte-table arithmetic (no loads, no branches, no predication, no compare): per group one lop3
# and one prmt turn the metadata into the special table word n0; per word a lop3 (magnitude
# indices), shl, shr; per 4 codes one prmt looks up the magnitudes, one the sign bytes, one the
# special table (code 8 reads the special value), one lop3 merges them, and two prmt spread the
# 4 high bytes into two fp16x2 registers for the two fp16x2 fma. The tables are registers set
# once per asm instance; the two a prmt cannot take as an immediate (t0, spec) come in as
# operands the kernel builds once before its loop, opaque to ptxas (OPAQUE_ASM). The kernel
# loads weights as words, metadata once per group.
# Run by emit.test (the four emit-*.py scripts share one process); by hand:
# python emit-gemv16.py | filecheck emit-gemv16.py
from qcompiler.codegen.emit import emit_kernel


def run(fn):
    print(f"// -----// {fn.__name__}")
    fn()
    return fn


# CHECK-LABEL: // -----// razer4
# CHECK: def decode16_razer4(w, x0, x1, x2, x3, aux, scale, acc):
# CHECK-LABEL: ASM_razer4 = tl.constexpr("""
# CHECK-NOT: {{ld\.|bra|@|setp|selp|set\.}}
# CHECK: .reg .b32 {{[^$]*}};
# CHECK: mov.b32 t0, $36;
# CHECK-NEXT: mov.b32 t1, 0x46444240;
# CHECK-NEXT: mov.b32 z, 0x00000000;
# CHECK-NEXT: mov.b32 spec, $40;
# CHECK-NEXT: mov.b32 u1, 0x80808080;
# CHECK: mov.b32 aux, $24;
# CHECK-NEXT: lop3.b32 ms, aux, 0x00004440, 0x00000000, 0xfc;
# CHECK-NEXT: prmt.b32 n0, spec, u1, ms;
# CHECK-NEXT: lop3.b32 sel, w, 0x77777777, 0x00000000, 0xc0;
# CHECK-NEXT: shl.b32 w4, w, 4;
# CHECK-NEXT: shr.u32 selh, sel, 16;
# CHECK-NEXT: prmt.b32 g, w4, w, 0xd9c8;
# CHECK-NEXT: prmt.b32 m, t0, t1, sel;
# CHECK-NEXT: prmt.b32 n, n0, u1, sel;
# CHECK-NEXT: lop3.b32 v, g, n, m, 0xea;
# CHECK-NEXT: prmt.b32 p, v, z, 0x1404;
# CHECK-NEXT: fma.rn.f16x2 acc, p, x0, acc;
# CHECK-NEXT: prmt.b32 p, v, z, 0x3424;
# CHECK-NEXT: fma.rn.f16x2 acc, p, x1, acc;
# CHECK-NEXT: prmt.b32 g, w4, w, 0xfbea;
# CHECK-NEXT: prmt.b32 m, t0, t1, selh;
# CHECK-NEXT: prmt.b32 n, n0, u1, selh;
# CHECK-NEXT: lop3.b32 v, g, n, m, 0xea;
# CHECK-NEXT: prmt.b32 p, v, z, 0x1404;
# CHECK-NEXT: fma.rn.f16x2 acc, p, x2, acc;
# CHECK-NEXT: prmt.b32 p, v, z, 0x3424;
# CHECK-NEXT: fma.rn.f16x2 acc, p, x3, acc;
# CHECK-NEXT: mov.b32 w, $5;
# CHECK-NOT: {{ld\.|bra|@|setp|selp|set\.|mov.b32 spec}}
# CHECK: cvt.f32.f16 flo, lo16;
# CHECK-NOT: {{ld\.|bra|@|setp|selp|set\.}}
# CHECK: """)
# CHECK: OPAQUE_ASM_razer4 = tl.constexpr('mov.u32 $0, %laneid; shl.b32 $0, $2, $0; {{.*}}')
# CHECK: def dot16_razer4(words, x0, x1, x2, x3, aux, scale, acc, tab_t0, tab_spec, USE_ASM:
# CHECK: [words, x0, x1, x2, x3, aux, scale, acc, tab_t0, tab_spec]
# CHECK: def qc_razer4_gemv16_n4096_k4096_g128(
# CHECK: EVEN: tl.constexpr = (N % BLOCK_N == 0) & (K % BLOCK_K == 0)
# CHECK: opaque_zero = tile_w * 0 + (stride_xm < 0).to(tl.int32)
# CHECK: tab_t0 = tl.full(tile_w.shape, 1044133888, tl.int32)
# CHECK: tab_spec = tl.full(tile_w.shape, -934755003, tl.int32)
# CHECK: for w0 in range(
# CHECK: g_idx = w0 + tile_c  # [1, CHUNKS, 1]: each chunk's first word
# CHECK: words = tl.load(w_rows + w_idx, mask=mask, other=other)
# CHECK: aux = tl.load(meta_ptr + g_offs, mask=g_mask, other=other).to(tl.int32)
# CHECK: acc = dot16_razer4(words, x0, x1, x2, x3, aux, scale, acc, tab_t0, tab_spec, USE_ASM)
# CHECK: GEMV16_KERNEL = qc_razer4_gemv16_n4096_k4096_g128
# CHECK-NEXT: GEMV_FP32_KERNEL = qc_razer4_gemv_n4096_k4096_g128
# CHECK-NEXT: GEMV_KERNEL = qc_razer4_gemv16_n4096_k4096_g128
@run
def razer4():
    print(emit_kernel("razer4", 4096, 4096, 128).source)


# fp4 (and mxfp4, nvfp4, pot4, dint4): the same table decode with the sign bytes as the
# constant 0x80808080, no per-group operand.
# CHECK-LABEL: // -----// fp4
# CHECK-LABEL: ASM_fp4 = tl.constexpr("""
# CHECK-NOT: {{ld\.|bra|@|setp|selp|set\.}}
# CHECK: prmt.b32 g, w4, w, 0xd9c8;
# CHECK-NEXT: prmt.b32 m, t0, t1, sel;
# CHECK-NEXT: lop3.b32 v, g, 0x80808080, m, 0xea;
# CHECK-NEXT: prmt.b32 p, v, z, 0x1404;
# CHECK-NEXT: fma.rn.f16x2 acc, p, x0, acc;
@run
def fp4():
    print(emit_kernel("fp4", 4096, 4096, 128).source)


# int4-sym: the magic-number decode, one lop3 and one f16x2 subtract per code pair.
# CHECK-LABEL: // -----// int4_sym
# CHECK-LABEL: ASM_int4_sym = tl.constexpr("""
# CHECK-NOT: {{ld\.|bra|@}}
# CHECK: prmt.b32 t, w, ws, 0x4400;
# CHECK-NEXT: lop3.b32 t, t, 0x000f000f, 0x64006400, 0xea;
# CHECK-NEXT: sub.rn.f16x2 t, t, aux;
# CHECK-NEXT: fma.rn.f16x2 acc, t, x0, acc;
# CHECK: aux = tl.full(scale.shape, (0x6400 + 8) * 0x10001, tl.int32)
@run
def int4_sym():
    print(emit_kernel("int4-sym", 4096, 4096, 128).source)


# nf4 (16 values, not sign-symmetric, two fp16 bytes each): four 8-entry byte tables per 4
# codes (high / low bytes of codes 0-7 and 8-15), merged by the code's bit 3 (g) with one lop3
# per byte plane, interleaved into fp16x2 lanes by prmt. No select tree, no load, no branch.
# CHECK-LABEL: // -----// nf4
# CHECK-LABEL: ASM_nf4 = tl.constexpr("""
# CHECK-NOT: {{ld\.|bra|@|setp|selp|set\.}}
# CHECK: prmt.b32 g, w4, w, 0xd9c8;
# CHECK-NEXT: prmt.b32 a, ha0, ha1, sel;
# CHECK-NEXT: prmt.b32 b, hb0, hb1, sel;
# CHECK-NEXT: lop3.b32 vh, g, b, a, 0xca;
# CHECK-NEXT: prmt.b32 a, la0, la1, sel;
# CHECK-NEXT: prmt.b32 b, lb0, lb1, sel;
# CHECK-NEXT: lop3.b32 vl, g, b, a, 0xca;
# CHECK-NEXT: prmt.b32 p, vl, vh, 0x5140;
# CHECK-NEXT: fma.rn.f16x2 acc, p, x0, acc;
# CHECK-NEXT: prmt.b32 p, vl, vh, 0x7362;
# CHECK-NEXT: fma.rn.f16x2 acc, p, x1, acc;
# CHECK-NOT: {{ld\.|bra|@|setp|selp|set\.}}
# CHECK: """)
# CHECK: GEMV16_KERNEL = qc_nf4_gemv16_n4096_k4096_g64
# CHECK-NEXT: GEMV_FP32_KERNEL = qc_nf4_gemv_n4096_k4096_g64
# CHECK-NEXT: GEMV_KERNEL = qc_nf4_gemv16_n4096_k4096_g64
@run
def nf4():
    print(emit_kernel("nf4", 4096, 4096, 64).source)

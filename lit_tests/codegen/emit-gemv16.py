# The fp16x2 M = 1 GEMV in emitted files: the decode's shape. RaZeR's asm is straight-line bit
# arithmetic (no loads, no branches, no predication): two lop3 per word clear junk nibbles;
# per code pair one prmt, the special code as one set.eq (code 8 is exactly lane 0x80FF), the
# E2M1 placement (shr, lop3, lop3), one fma adding the per-group special operand, the +-2^14
# multiply and the fp16x2 dot. The kernel loads weights as words, metadata once per group.
# RUN: %PYTHON %s | FileCheck %s
from qcompiler.codegen.emit import emit_kernel


def run(fn):
    print(f"// -----// {fn.__name__}")
    fn()
    return fn


# CHECK-LABEL: // -----// razer4
# CHECK: def decode16_razer4(w, x0, x1, x2, x3, aux, scale, acc):
# CHECK-LABEL: ASM_razer4 = tl.constexpr("""
# CHECK-NOT: {{ld\.|bra|@|setp|selp}}
# CHECK: shl.b32 w4, w, 4;
# CHECK-NEXT: lop3.b32 w4, w4, 0xf0f0f0f0, 0x00000000, 0xc0;
# CHECK-NEXT: lop3.b32 wm, w, 0xf0f0f0f0, 0x00000000, 0xc0;
# CHECK-NEXT: prmt.b32 a, w4, wm, 0x4c08;
# CHECK-NEXT: mov.b32 s, 0x80ff80ff; set.eq.f16x2.f16x2 e, a, s;
# CHECK-NEXT: shr.u32 m, a, 3;
# CHECK-NEXT: lop3.b32 m, m, 0x0e000e00, 0x00000000, 0xc0;
# CHECK-NEXT: lop3.b32 s, a, 0x80008000, 0x74007400, 0xea;
# CHECK-NEXT: fma.rn.f16x2 m, e, aux, m;
# CHECK-NEXT: mul.rn.f16x2 t, m, s;
# CHECK-NEXT: fma.rn.f16x2 acc, t, x0, acc;
# CHECK-NEXT: prmt.b32 a, w4, wm, 0x5d19;
# CHECK-NOT: {{ld\.|bra|@|setp|selp}}
# CHECK: cvt.f32.f16 flo, lo16;
# CHECK-NOT: {{ld\.|bra|@|setp|selp}}
# CHECK: """)
# CHECK: def dot16_razer4(words, x0, x1, x2, x3, aux, scale, acc, USE_ASM: tl.constexpr):
# CHECK: def qc_razer4_gemv16_n4096_k4096_g128(
# CHECK: words = tl.load(w_rows + w_idx, mask=mask, other=0)
# CHECK: g_idx = w0 + tile_c  # [1, CHUNKS, 1]: each chunk's first word
# CHECK: meta = tl.load(meta_ptr + g_offs, mask=g_mask, other=0).to(tl.int32)
# CHECK: acc = dot16_razer4(words, x0, x1, x2, x3, aux, scale, acc, USE_ASM)
# CHECK: GEMV16_KERNEL = qc_razer4_gemv16_n4096_k4096_g128
# CHECK-NEXT: GEMV_FP32_KERNEL = qc_razer4_gemv_n4096_k4096_g128
# CHECK-NEXT: GEMV_KERNEL = qc_razer4_gemv16_n4096_k4096_g128
@run
def razer4():
    print(emit_kernel("razer4", 4096, 4096, 128).source)


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


# nf4 (a table format) has no fp16x2 decode: the fp32 GEMV serves M = 1.
# CHECK-LABEL: // -----// nf4
# CHECK-NOT: ASM_nf4
# CHECK: GEMV16_KERNEL = None
# CHECK-NEXT: GEMV_FP32_KERNEL = qc_nf4_gemv_n4096_k4096_g64
# CHECK-NEXT: GEMV_KERNEL = qc_nf4_gemv_n4096_k4096_g64
@run
def nf4():
    print(emit_kernel("nf4", 4096, 4096, 64).source)

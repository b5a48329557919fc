# The tensor-core GEMM (M > 4) in emitted files: the decode's shape. Codes are read as int32
# words (8 codes, one asm block each); the asm is straight-line (no loads, branches,
# predication); RaZeR's special value costs one set.eq and one fma per code pair against a
# per-word register the asm looks up from the 2-bit metadata with one mad + prmt (no table in
# memory); the group scale is one fp16x2 multiply per pair (nvfp4: folded into the sign
# multiplier, its 2^u and global scale applied to the fp32 accumulator); the weights are the
# dot's fp16 operand; QC_GEMM=fp32 keeps the old kernel selectable; nf4 decodes 4 codes per
# prmt of an 8-entry byte table (fp16 high / low bytes of codes 0-7, 8-15) merged by the code's
# bit 3, with the table words a prmt cannot take as an immediate passed in as operands.
# Run by emit.test (the four emit-*.py scripts share one process); by hand:
# python emit-gemm16.py | filecheck emit-gemm16.py
from qcompiler.codegen.emit import emit_kernel


def run(fn):
    print(f"// -----// {fn.__name__}")
    fn()
    return fn


@run
def razer4():
    print(emit_kernel("razer4", 4096, 4096, 128).source)


# CHECK-LABEL: // -----// razer4
# CHECK: def h16_e2m1(c, f1, s, aux, SPECIAL: tl.constexpr):
# CHECK-LABEL: ASM16_razer4 = tl.constexpr("""
# CHECK-NOT: {{ld\.|bra|@|setp|selp}}
# CHECK: mov.b32 meta, $9;
# CHECK: mad.lo.u32 e, meta, 0x00002222, 0x00001010;
# CHECK-NEXT: prmt.b32 aux, tl, th, e;
# CHECK-COUNT-4: set.eq.f16x2.f16x2 e, a, s;{{$}}
# CHECK-NOT: {{ld\.|bra|@|setp|selp}}
# CHECK: mov.b32 {$6, $7}, o3;
# CHECK: CONSTRAINTS16_razer4 = tl.constexpr('=h,=h,=h,=h,=h,=h,=h,=h,r,r,h,r')
# CHECK: def qc_razer4_gemm16_n4096_k4096_g128(
# CHECK: words = tl.load(w_rows + wd[None, :], mask=w_mask, other=0)
# CHECK: if USE_ASM:
# CHECK-NEXT: p0, p1, p2, p3, p4, p5, p6, p7 = tl.inline_asm_elementwise(
# CHECK: else:
# CHECK-NEXT: c16 = words.to(tl.int16)
# CHECK: w = tl.join(r0, r1).reshape(BLOCK_N, BLOCK_K)
# CHECK: acc = tl.dot(xk, tl.trans(w), acc)
# CHECK: GEMM16_KERNEL = qc_razer4_gemm16_n4096_k4096_g128
# CHECK-NEXT: GEMM_FP32_KERNEL = qc_razer4_gemm_n4096_k4096_g128
# CHECK-NEXT: GEMM_KERNEL = qc_razer4_gemm16_n4096_k4096_g128
# CHECK: def _use_gemm16(x, tensors, cfg):
# CHECK: os.environ.get("QC_GEMM", "") != "fp32"


@run
def int4():
    print(emit_kernel("int4", 4096, 4096, 128).source)


# CHECK-LABEL: // -----// int4
# CHECK-LABEL: ASM16_int4 = tl.constexpr("""
# CHECK-NOT: {{ld\.|bra|@|set\.|fma}}
# CHECK-COUNT-4: sub.rn.f16x2 t, t, aux;
# CHECK-NOT: {{ld\.|bra|@|set\.|fma}}
# CHECK: """)
# CHECK: aux32 = (z + (0x6400 + 0)) * 0x10001


@run
def nvfp4_razer():
    print(emit_kernel("nvfp4-razer", 4096, 4096, 16).source)


# CHECK-LABEL: // -----// nvfp4_razer
# CHECK-LABEL: ASM16_nvfp4_razer = tl.constexpr("""
# CHECK-NOT: mul.rn.f16x2 o0, t, sp;
# CHECK: lop3.b32 s, a, 0x80008000, sp, 0xea;
# CHECK: mul.rn.f16x2 o0, m, s;
# CHECK: acc = acc * (tl.load(gscale_ptr).to(tl.float32) * 4096.0)


@run
def nf4():
    print(emit_kernel("nf4", 4096, 4096, 64).source)


# CHECK-LABEL: // -----// nf4
# CHECK: def h16_table16(c, s, V0: tl.constexpr,
# CHECK-LABEL: ASM16_nf4 = tl.constexpr("""
# CHECK-NOT: {{ld\.|bra|@|setp|selp|set\.}}
# CHECK: mov.b32 ha0, $10;
# CHECK-NEXT: mov.b32 ha1, 0x00adb1b4;
# CHECK: and.b32 sel, w, 0x77777777;
# CHECK-NEXT: shr.u32 selh, sel, 16;
# CHECK-NEXT: prmt.b32 g, w4, w, 0xd9c8;
# CHECK-NEXT: prmt.b32 a, ha0, ha1, sel;
# CHECK-NEXT: prmt.b32 b, hb0, hb1, sel;
# CHECK-NEXT: lop3.b32 vh, g, b, a, 0xca;
# CHECK-NEXT: prmt.b32 a, la0, la1, sel;
# CHECK-NEXT: prmt.b32 b, lb0, lb1, sel;
# CHECK-NEXT: lop3.b32 vl, g, b, a, 0xca;
# CHECK-NEXT: prmt.b32 t, vl, vh, 0x5140;
# CHECK-NEXT: mul.rn.f16x2 o0, t, sp;
# CHECK-COUNT-3: mul.rn.f16x2 o{{[1-3]}}, t, sp;
# CHECK-NOT: {{ld\.|bra|@|setp|selp|set\.}}
# CHECK: CONSTRAINTS16_nf4 = tl.constexpr('=h,=h,=h,=h,=h,=h,=h,=h,r,h,r,r,r,r')
# CHECK: def qc_nf4_gemm16_n4096_k4096_g64(
# CHECK: tab_ha0 = tl.full((1, 1), -1229407812, tl.int32)
# CHECK: tab_ha0 = tl.inline_asm_elementwise(OPAQUE16_nf4,
# CHECK: for k0 in range(
# CHECK: ASM16_nf4, CONSTRAINTS16_nf4,
# CHECK-NEXT: [words, tl.broadcast_to(s, words.shape), tl.broadcast_to(tab_ha0, words.shape),
# CHECK: p0 = h16_table16(c16 & 15, s, -1.0, -0.6962890625,
# CHECK: GEMM16_KERNEL = qc_nf4_gemm16_n4096_k4096_g64
# CHECK-NEXT: GEMM_FP32_KERNEL = qc_nf4_gemm_n4096_k4096_g64
# CHECK-NEXT: GEMM_KERNEL = qc_nf4_gemm16_n4096_k4096_g64

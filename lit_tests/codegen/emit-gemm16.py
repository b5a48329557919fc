# The tensor-core GEMM (M > 4) in emitted files: the decode's shape. Codes are read as int32
# words (8 codes, one asm block each); the asm is straight-line (no loads, branches,
# predication); RaZeR's special value costs one set.eq and one fma per code pair against a
# per-word register the asm looks up from the 2-bit metadata with one mad + prmt (no table in
# memory); the group scale is one fp16x2 multiply per pair (nvfp4: folded into the sign
# multiplier, its 2^u and global scale applied to the fp32 accumulator); the weights are the
# dot's fp16 operand; QC_GEMM=fp32 keeps the old kernel selectable; nf4 has no gemm16.
# RUN: %PYTHON %s | FileCheck %s
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
# CHECK: CONSTRAINTS16_razer4 = tl.constexpr('=h,=h,=h,=h,=h,=h,=h,=h,r,r,h')
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
    src = emit_kernel("nf4", 4096, 4096, 64).source
    print(src[src.index("GEMM16_KERNEL"):].splitlines()[0])


# CHECK-LABEL: // -----// nf4
# CHECK-NEXT: GEMM16_KERNEL = None

# Emitted kernel source: specialized names, a header naming format / shape / group / layers,
# the family's dequant helper inlined, and the dequant call between the packed-weight load and
# the accumulation (GEMV: FMA into the register tile; GEMM: tl.dot).
# Run by emit.test (the four emit-*.py scripts share one process); by hand:
# python emit-kernel.py | filecheck emit-kernel.py
from qcompiler.codegen.emit import emit_kernel


def run(fn):
    print(f"// -----// {fn.__name__}")
    fn()
    return fn


# CHECK-LABEL: // -----// razer4
# CHECK: # format:     razer4
# CHECK-NEXT: # decode:     minifloat codes, 4-bit, scale float, metadata
# CHECK-NEXT: # shape:      N=4096 (out features) x K=4096 (in features), weight [N, K]
# CHECK-NEXT: # group size: 128 (along K)
# CHECK-NEXT: # kernels:    qc_razer4_gemv_n4096_k4096_g128 (M <= 4)
# CHECK-NEXT: #             qc_razer4_gemm_n4096_k4096_g128 (M > 4)
# CHECK-NEXT: # layers:     model.layers.0.self_attn.q_proj
# CHECK-NEXT: #             model.layers.0.self_attn.o_proj
# CHECK: import torch
# CHECK-NEXT: import triton
# CHECK-NEXT: import triton.language as tl
# CHECK: def minifloat_to_fp16(
# CHECK: bits = (c & ((1 << (EXP_BITS + MAN_BITS)) - 1)) << (10 - MAN_BITS)
# CHECK: def group_params_razer4(scale_raw, zero_raw, meta_raw, gscale):
# CHECK: minifloat_group(scale, meta_raw.to(tl.int32), UNBIAS=16384.0, SPECIAL_CODE=8,
# CHECK-NEXT: SPECIAL_0=5.0, SPECIAL_1=-5.0, SPECIAL_2=8.0, SPECIAL_3=-8.0)
# CHECK: def dequant_razer4(codes, s, aux):
# CHECK-NEXT: """razer4 codes -> fp32 weights (minifloat decode)."""
# CHECK-NEXT: return minifloat_codes(codes, s, aux, EXP_BITS=2, MAN_BITS=1, SIGNED=True,
# CHECK-SAME: SPECIAL_CODE=8)
# CHECK: def qc_razer4_gemv_n4096_k4096_g128(
# CHECK: units = tl.load(w_rows + u[None, :, :], mask=w_mask, other=0).to(tl.int32)
# CHECK: s, aux = group_params_razer4(scale_raw, zero_raw, meta_raw, gscale)
# CHECK: codes = (units >> (i * BITS)) & CODE_MASK
# CHECK-NEXT: w = dequant_razer4(codes, s, aux)
# CHECK: acc += xk.to(tl.float32) * w[None, :, :, :]
# CHECK: def qc_razer4_gemm_n4096_k4096_g128(
# CHECK: units = tl.load(w_cols + u[:, None], mask=w_mask, other=0).to(tl.int32)
# CHECK: w = dequant_razer4(codes, s, aux).to(x_ptr.dtype.element_ty)
# CHECK: acc = tl.dot(xk, w, acc)
# CHECK: GEMV16_KERNEL = qc_razer4_gemv16_n4096_k4096_g128
# CHECK-NEXT: GEMV_FP32_KERNEL = qc_razer4_gemv_n4096_k4096_g128
# CHECK-NEXT: GEMV_KERNEL = qc_razer4_gemv16_n4096_k4096_g128
# CHECK-NEXT: GEMM16_KERNEL = qc_razer4_gemm16_n4096_k4096_g128
# CHECK-NEXT: GEMM_FP32_KERNEL = qc_razer4_gemm_n4096_k4096_g128
# CHECK-NEXT: GEMM_KERNEL = qc_razer4_gemm16_n4096_k4096_g128
# CHECK: def linear(x, tensors, bias=None, config=None):
@run
def razer4():
    print(emit_kernel("razer4", 4096, 4096, 128, ["model.layers.0.self_attn.q_proj",
                                                  "model.layers.0.self_attn.o_proj"]).source)


# Power of two: the exponent is subtracted in the scale's exponent field, no multiply.
# CHECK-LABEL: // -----// pot4
# CHECK: # kernels:    qc_pot4_gemv_n11008_k4096_g128 (M <= 4)
# CHECK: def pot_codes(c, s, aux, MAG_BITS: tl.constexpr):
# CHECK: bits = tl.maximum(s - (m << 23), 0) | (((c >> MAG_BITS) & 1) << 31)
# CHECK: return pot_group(scale, E0=0)
# CHECK: return pot_codes(codes, s, aux, MAG_BITS=3)
# CHECK-NOT: def minifloat_to_fp16(
# CHECK: w = dequant_pot4(codes, s, aux)
@run
def pot4():
    print(emit_kernel("pot4", 11008, 4096, 128, "model.layers.3.mlp.up_proj").source)


# Integers: (q - z) * s with the zero point loaded per group.
# CHECK-LABEL: // -----// int4
# CHECK: # decode:     int codes, 4-bit, scale float, zero point
# CHECK: HAS_ZERO = True
# CHECK: return (c - aux).to(tl.float32) * s
# CHECK: return int_group(scale, zero_raw, OFFSET=0, HAS_ZERO=True)
@run
def int4():
    print(emit_kernel("int4", 4096, 11008, 64, "model.layers.0.mlp.down_proj").source)


# Scale decoders: NVFP4's E4M3 block scale times the global scale, MXFP4's E8M0 exponent.
# CHECK-LABEL: // -----// scales
# CHECK: scale = scale_minifloat(scale_raw, EXP_BITS=4, MAN_BITS=3, SIGNED=True, UNBIAS=256.0)
# CHECK-SAME: * gscale
# CHECK: scale = scale_e8m0(scale_raw)
@run
def scales():
    print(emit_kernel("nvfp4", 4096, 4096, 16, "a").source)
    print(emit_kernel("mxfp4", 4096, 4096, 32, "b").source)


# NF4: a select tree over the table values from the format registry.
# CHECK-LABEL: // -----// nf4
# CHECK: q0 = tl.where(b1, tl.where(b0, V3, V2), tl.where(b0, V1, V0))
# CHECK: return table_codes(codes, s, aux, SIGN_BIT=-1, V0=-1.0, V1=-0.6961928009986877,
@run
def nf4():
    print(emit_kernel("nf4", 128, 256, 64, "c").source)

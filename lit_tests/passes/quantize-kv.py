# quantize-kv: the value right after its projection's reshape to heads, the key after RoPE, both
# before GQA's head repetition (what a KV cache stores), groups along head_dim.
# RUN: qc-opt zoo:llama-tiny -p 'canonicalize,quantize-kv{format=razer4}' | FileCheck %s
# CHECK-LABEL: qc.func @main
# CHECK: aten.linear(%{{.*}}, %model_layers_0_self_attn_v_proj_weight)
# CHECK: %[[V:.*]] = aten.transpose.int(%{{.*}}, 1, 2) : tensor<?x2x?x32xf32>
# CHECK-NEXT: %[[VQ:.*]] = qc.quantize_kv(%[[V]]) {format = "razer4-kv", group_size = 32, layer = "model.layers.0.self_attn.v_proj"} : tensor<?x2x?x32xf32>
# CHECK: %[[K:.*]] = aten.add.Tensor(%{{.*}}, %{{.*}}) : tensor<?x2x?x32xf32>
# CHECK-NEXT: %[[KQ:.*]] = qc.quantize_kv(%[[K]]) {format = "razer4-kv", group_size = 32, layer = "model.layers.0.self_attn.k_proj"} : tensor<?x2x?x32xf32>
# CHECK-NEXT: aten.unsqueeze(%[[KQ]], 2) : tensor<?x2x1x?x32xf32>
# CHECK: aten.unsqueeze(%[[VQ]], 2) : tensor<?x2x1x?x32xf32>
# CHECK: qc.quantize_kv({{.*}}layer = "model.layers.1.self_attn.v_proj"
# CHECK: qc.quantize_kv({{.*}}layer = "model.layers.1.self_attn.k_proj"

# int4 with two groups per head.
# RUN: qc-opt zoo:llama-tiny -p 'canonicalize,quantize-kv{format=int4,group-size=16}' | FileCheck %s --check-prefix=INT4
# INT4: qc.quantize_kv(%{{.*}}) {format = "int4", group_size = 16, layer = "model.layers.0.self_attn.v_proj"}

# A fused QKV projection is reported, not guessed at.
# RUN: %not --code 1 qc-opt zoo:phi3-tiny -p 'quantize-kv' --reproducer-dir %t 2>&1 | FileCheck %s --check-prefix=FUSED
# FUSED: error: quantize-kv: attention %scaled_dot_product_attention uses a fused QKV projection (model.layers.0.self_attn.qkv_proj); not supported

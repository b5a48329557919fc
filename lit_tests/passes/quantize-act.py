# quantize-act: one qc.quantize_act per distinct linear input (q/k/v and gate/up share theirs),
# in front of aten.linear or, after lower-datatype, qc.linear_<format>; lm_head keeps fp input.
# RUN: qc-opt zoo:llama-tiny -p 'canonicalize,quantize-act' | FileCheck %s
# CHECK-LABEL: qc.func @main
# CHECK: %[[X:.*]] = aten.mul.Tensor(%model_layers_0_input_layernorm_weight, %{{.*}})
# CHECK-NEXT: %[[Q:.*]] = qc.quantize_act(%[[X]]) {format = "fp8-e4m3", granularity = "token", pow2_scale = false} : tensor<?x?x128xf32>
# CHECK-NEXT: aten.linear(%[[Q]], %model_layers_0_self_attn_q_proj_weight)
# CHECK: aten.linear(%[[Q]], %model_layers_0_self_attn_k_proj_weight)
# CHECK: aten.linear(%[[Q]], %model_layers_0_self_attn_v_proj_weight)
# CHECK: %[[O:.*]] = qc.quantize_act(%{{.*}}) {{.*}} : tensor<?x?x128xf32>
# CHECK-NEXT: aten.linear(%[[O]], %model_layers_0_self_attn_o_proj_weight)
# CHECK: %[[D:.*]] = qc.quantize_act(%{{.*}}) {{.*}} : tensor<?x?x256xf32>
# CHECK-NEXT: aten.linear(%[[D]], %model_layers_0_mlp_down_proj_weight)
# CHECK: %[[N:.*]] = aten.mul.Tensor(%model_norm_weight, %{{.*}})
# CHECK-NEXT: aten.linear(%[[N]], %lm_head_weight)
# CHECK: qc.return

# After lowering: INT8 per tensor with ZeroQuant-FP's power-of-two scale feeds qc.linear_fp4.
# RUN: qc-opt zoo:llama-tiny -p 'canonicalize,lower-datatype{format=fp4,search=rtn},quantize-act{format=int8,granularity=tensor,pow2-scale=true}' | FileCheck %s --check-prefix=LOWERED
# LOWERED: %[[Q:.*]] = qc.quantize_act(%{{.*}}) {format = "int8", granularity = "tensor", pow2_scale = true}
# LOWERED: qc.linear_fp4(%[[Q]], {{.*}}) {group_size = 128, n = 128, k = 128, layer = "model.layers.0.self_attn.q_proj"}
# LOWERED: %[[N:.*]] = aten.mul.Tensor(%model_norm_weight, %{{.*}})
# LOWERED-NEXT: aten.linear(%[[N]], %lm_head_weight)

# A weight format is not an activation format.
# RUN: %not --code 2 qc-opt zoo:llama-tiny -p 'quantize-act{format=fp4}' 2>&1 | FileCheck %s --check-prefix=FORMAT
# FORMAT: error: quantize-act: option 'format' expects one of fp8-e4m3|int8, got 'fp4'

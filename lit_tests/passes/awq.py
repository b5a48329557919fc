# awq: per-input-channel scales s = mean|x|^alpha searched against the weight-quantization output
# error. On llama-tiny every 1/s folds (norm weights, v_proj/up_proj rows): the IR keeps its
# structure. On BERT (post-norm: the LayerNorm output also feeds the residual) 1/s becomes an
# explicit aten.mul of the activation before the linears, which lower-datatype keeps.
# RUN: qc-opt zoo:llama-tiny -p 'canonicalize,awq{format=razer4,group-size=64,grid=4}' --calib-samples 2 --calib-seqlen 16 -vv --pass-statistics 2>&1 | FileCheck %s
# CHECK: note: awq: output error per group (RTN->scaled): model.layers.0.self_attn.o_proj a={{[0-9.]+}} {{[0-9.e+-]+}}->{{[0-9.e+-]+}}; model.layers.0.mlp.down_proj
# CHECK: {{^}}awq{format=razer4,group-size=64,grid=4}
# CHECK: (S) 0 groups-mul
# CHECK-NEXT: (S) 14 layers
# CHECK-LABEL: qc.func @main
# CHECK-NOT: awq_inv_scale
# CHECK: aten.linear(%{{.*}}, %model_layers_0_self_attn_q_proj_weight)

# RUN: qc-opt zoo:bert-tiny -p 'canonicalize,awq{format=razer4,group-size=64,grid=4},lower-datatype{format=razer4,group-size=64,search=rtn},dce' --calib-samples 2 --calib-seqlen 16 | FileCheck %s --check-prefix=BERT
# BERT: %[[INV:[a-z0-9_]+]] = qc.param "encoder.layer.0.attention.self.query.awq_inv_scale" : tensor<128xf32>
# BERT-NEXT: %[[X:[a-z0-9_]+]] = aten.mul.Tensor(%layer_norm, %[[INV]]) : tensor<?x?x128xf32>
# BERT: qc.linear_razer4(%[[X]], %encoder_layer_0_attention_self_query_codes
# BERT: qc.linear_razer4(%[[X]], %encoder_layer_0_attention_self_key_codes

# Order: awq rescales fp weights, so it must come before planning and lowering.
# RUN: %not --code 1 qc-opt zoo:llama-tiny -p 'canonicalize,gptq{format=int4},awq{format=int4}' --calib-samples 2 --calib-seqlen 8 --reproducer-dir %t 2>&1 | FileCheck %s --check-prefix=ORDER
# ORDER: error: awq: weights are already planned (clip/gptq/...); run awq before them
# RUN: %not --code 1 qc-opt zoo:llama-tiny -p 'awq{format=razer4-kv}' --reproducer-dir %t 2>&1 | FileCheck %s --check-prefix=WFORMAT
# WFORMAT: error: awq: 'razer4-kv' is an activation format; choose a weight format (see 'qcompile formats')

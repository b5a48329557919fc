# gptq: weights of the selected layers become their GPTQ fake-quantized values, each param line
# says who planned it; lower-datatype then packs those exact codes (qc.linear ops, no plans left).
# RUN: qc-opt zoo:llama-tiny --calib-samples 2 --calib-seqlen 8 -p 'canonicalize,gptq{format=razer4,group-size=64,skip=lm_head,*embed*,layers.1.*}' | FileCheck %s
# CHECK-LABEL: qc.func @main
# CHECK: qc.param "model.layers.0.self_attn.q_proj.weight" : tensor<128x128xf32> {plan = "razer4 g64 by gptq"}
# CHECK: qc.param "model.layers.0.mlp.down_proj.weight" : tensor<128x256xf32> {plan = "razer4 g64 by gptq"}
# CHECK: qc.param "model.layers.1.self_attn.q_proj.weight" : tensor<128x128xf32>{{$}}
# CHECK: qc.param "lm_head.weight" : tensor<512x128xf32>{{$}}

# RUN: qc-opt zoo:llama-tiny --calib-samples 2 --calib-seqlen 8 -p 'canonicalize,gptq{format=pot4,act-order=true,skip=lm_head,*embed*,layers.1.*},lower-datatype{format=pot4,skip=lm_head,*embed*,layers.1.*},dce' -o %t.ir --pass-statistics 2>&1 | FileCheck %s --check-prefix=STATS
# RUN: FileCheck %s --check-prefix=LOWER < %t.ir
# STATS: gptq{format=pot4,act-order=true,skip=lm_head,*embed*,layers.1.*}
# STATS-NEXT: (S) 7 layers-planned
# STATS: (S) 7 layers-quantized
# LOWER-NOT: {plan =
# LOWER: qc.linear_pot4({{.*}}) {group_size = 128, n = 128, k = 128, layer = "model.layers.0.self_attn.q_proj"}
# LOWER: aten.linear(%{{.*}}, %model_layers_1_self_attn_q_proj_weight)

# Errors: an activation format, and an unknown one, name the pass.
# RUN: %not --code 2 qc-opt zoo:llama-tiny -p 'gptq{format=fp8x}' --reproducer-dir %t 2>&1 | FileCheck %s --check-prefix=ERR
# ERR: error: gptq: unknown format 'fp8x'

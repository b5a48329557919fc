# aqas: scales chosen by the W4A8 output error; notes show each group's error before -> after.
# RUN: qc-opt zoo:llama-tiny -p 'canonicalize,aqas{w-format=fp4,a-format=fp8-e4m3,group-size=64,grid=4}' --calib-samples 2 --calib-seqlen 16 -vv --pass-statistics 2>&1 | FileCheck %s
# CHECK: note: aqas: model.layers.0.self_attn.v_proj rows absorb 1/s of model.layers.0.self_attn.o_proj (GQA repeat 2)
# CHECK: note: aqas: W4A8 error per group (unscaled->chosen): model.layers.0.self_attn.v_proj {{[0-9.e+-]+}}->{{[0-9.e+-]+}};
# CHECK: {{^}}aqas
# CHECK-NEXT: (S) 8 groups-changed
# CHECK-LABEL: qc.func @main
# CHECK: aten.linear(%{{.*}}, %model_layers_0_self_attn_q_proj_weight)

# The weight format must be able to hold weights.
# RUN: %not --code 1 qc-opt zoo:llama-tiny -p 'aqas{w-format=razer4-kv}' --calib-samples 2 --calib-seqlen 16 --reproducer-dir %t 2>&1 | FileCheck %s --check-prefix=WFORMAT
# WFORMAT: error: aqas: 'razer4-kv' is not a weight format; use e.g. w-format=fp4 or int4

# lower-datatype: linears become qc.linear_<format> ops whose attributes say group size, N, K
# and the layer; packed tensors become params; the fp weight disappears; lm_head stays fp.
# RUN: qc-opt zoo:llama-tiny -p 'canonicalize,lower-datatype{format=razer4,group-size=64},dce' | FileCheck %s
# CHECK-LABEL: qc.func @main
# CHECK-NOT: qc.param "model.layers.0.self_attn.q_proj.weight"
# CHECK: %[[CODES:.*]] = qc.param "model.layers.0.self_attn.q_proj.codes" : tensor<128x64xui8>
# CHECK-NEXT: %[[SCALES:.*]] = qc.param "model.layers.0.self_attn.q_proj.scales" : tensor<128x2xf16>
# CHECK-NEXT: %[[META:.*]] = qc.param "model.layers.0.self_attn.q_proj.meta" : tensor<128x2xui8>
# CHECK-NEXT: %linear_razer4 = qc.linear_razer4(%{{.*}}, %[[CODES]], %[[SCALES]], none, %[[META]], none, none) {group_size = 64, n = 128, k = 128, layer = "model.layers.0.self_attn.q_proj"} : tensor<?x?x128xf32>
# CHECK: qc.linear_razer4({{.*}}) {group_size = 64, n = 128, k = 256, layer = "model.layers.1.mlp.down_proj"}
# CHECK: aten.linear(%{{.*}}, %lm_head_weight)
# CHECK: qc.return

# Per-layer overrides, and keeping every layer (skip= empty):
# RUN: qc-opt zoo:llama-tiny -p 'canonicalize,lower-datatype{format=razer4,skip=,override=layers.*.mlp.down_proj:format=int8}' | FileCheck %s --check-prefix=OVERRIDE
# OVERRIDE: qc.linear_int8({{.*}}) {group_size = 256, n = 128, k = 256, layer = "model.layers.0.mlp.down_proj"}
# OVERRIDE: qc.linear_razer4({{.*}}) {group_size = 128, n = 512, k = 128, layer = "lm_head"}
# OVERRIDE-NOT: aten.linear

# Formats with a per-tensor scale (nvfp4) carry it as one more operand.
# RUN: qc-opt zoo:llama-tiny -p 'canonicalize,lower-datatype{format=nvfp4}' | FileCheck %s --check-prefix=NVFP4
# NVFP4: %[[GS:.*]] = qc.param "model.layers.0.self_attn.q_proj.global_scale" : tensor<1xf32>
# NVFP4-NEXT: qc.linear_nvfp4(%{{.*}}, %{{.*}}, %{{.*}}, none, none, %[[GS]], none) {group_size = 16, n = 128, k = 128,

# MoE (Mixtral): each expert is a linear of its own (qcompiler/moe.py) and is lowered like any
# other; the router (mlp.gate) and lm_head stay fp by default, and -v says so.
# RUN: qc-opt zoo:mixtral-tiny -p 'canonicalize,lower-datatype{format=int4},dce' -v 2>%t.err | FileCheck %s --check-prefix=MOE
# RUN: FileCheck %s --check-prefix=MOE-NOTE < %t.err
# MOE: %{{.*}} = aten.linear(%{{.*}}, %model_layers_0_mlp_gate_weight)
# MOE: qc.linear_int4({{.*}}) {group_size = 128, n = 512, k = 128, layer = "model.layers.0.mlp.experts.0.gate_up_proj"}
# MOE: qc.linear_int4({{.*}}) {group_size = 128, n = 128, k = 256, layer = "model.layers.0.mlp.experts.0.down_proj"}
# MOE: qc.linear_int4({{.*}}) {group_size = 128, n = 128, k = 256, layer = "model.layers.1.mlp.experts.3.down_proj"}
# MOE-NOT: experts.gate_up_proj
# MOE-NOTE: note: lower-datatype: kept in floating point as asked (skip/override): model.layers.0.mlp.gate, model.layers.1.mlp.gate, lm_head

# Errors name the pass, the layer and the fix.
# RUN: %not --code 1 qc-opt zoo:stories260k -p 'lower-datatype{format=razer4,group-size=32}' --reproducer-dir %t 2>&1 | FileCheck %s --check-prefix=INDIVISIBLE
# INDIVISIBLE: error: lower-datatype: group size 32 does not divide K=172 in model.layers.0.mlp.down_proj; no supported group size divides it: use --on-indivisible pad (lower-datatype{on-indivisible=pad}) to zero-pad K (exact) or --on-indivisible skip to keep such layers in fp
# RUN: %not --code 2 qc-opt zoo:llama-tiny -p 'lower-datatype{on-indivisible=maybe}' 2>&1 | FileCheck %s --check-prefix=OPTION
# OPTION: error: lower-datatype: option 'on-indivisible' expects one of error|skip|pad, got 'maybe'

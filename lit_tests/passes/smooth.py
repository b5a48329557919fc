# smooth: SmoothQuant scales move into weights; the IR's structure does not change, the groups
# (and where 1/s goes) are in the notes and statistics (stderr, printed before the IR).
# RUN: qc-opt zoo:llama-tiny -p 'canonicalize,smooth{alpha=0.5}' --calib-samples 2 --calib-seqlen 16 -vv --pass-statistics 2>&1 | FileCheck %s
# CHECK: note: smooth: skipped lm_head: skip pattern
# CHECK: note: smooth: model.layers.0.self_attn.v_proj rows absorb 1/s of model.layers.0.self_attn.o_proj (GQA repeat 2)
# CHECK: note: smooth: model.layers.0.mlp.up_proj rows absorb 1/s of model.layers.0.mlp.down_proj
# CHECK: note: smooth: model.layers.0.input_layernorm weight absorb 1/s of model.layers.0.self_attn.q_proj, model.layers.0.self_attn.k_proj, model.layers.0.self_attn.v_proj
# CHECK: note: smooth: model.layers.0.post_attention_layernorm weight absorb 1/s of model.layers.0.mlp.gate_proj, model.layers.0.mlp.up_proj
# CHECK: {{^}}smooth
# CHECK-NEXT: (S) 8 groups-changed
# CHECK-NEXT: (S) 1 groups-skipped
# CHECK-NEXT: (S) 14 layers-changed
# CHECK-LABEL: qc.func @main
# CHECK-NOT: qc.quantize
# CHECK: aten.linear(%{{.*}}, %model_layers_0_self_attn_q_proj_weight)

# Smoothing must come before lowering: the fp weights are what it rescales.
# RUN: %not --code 1 qc-opt zoo:llama-tiny -p 'lower-datatype{format=int4,search=rtn},smooth' --reproducer-dir %t 2>&1 | FileCheck %s --check-prefix=ORDER
# ORDER: error: smooth: the program already has quantized qc.linear_* layers; run smooth before lower-datatype

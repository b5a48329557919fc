# pot-refine: PoTPTQ step 2, group scales refined on calibration data with codes fixed; planned
# for lower-datatype, which then packs exactly those scales.
# RUN: qc-opt zoo:llama-tiny --calib-samples 2 --calib-seqlen 8 -p 'canonicalize,pot-refine{format=pot3,group-size=64,steps=20,skip=lm_head,*embed*,layers.1.*}' | FileCheck %s
# CHECK-LABEL: qc.func @main
# CHECK: qc.param "model.layers.0.self_attn.q_proj.weight" : tensor<128x128xf32> {plan = "pot3 g64 by pot-refine"}
# CHECK: qc.param "model.layers.1.self_attn.q_proj.weight" : tensor<128x128xf32>{{$}}

# RUN: %not --code 1 qc-opt zoo:llama-tiny -p 'pot-refine{format=razer4}' --reproducer-dir %t 2>&1 | FileCheck %s --check-prefix=ERR
# ERR: error: pot-refine: format 'razer4' is not a power-of-two format; pot-refine refines pot2/pot3/pot4 scales (use clip or gptq for other formats)

# clip: per-group clipping chosen by output error on calibration data (or weight error), the
# result planned on each weight's param line for lower-datatype.
# RUN: qc-opt zoo:llama-tiny --calib-samples 2 --calib-seqlen 8 -p 'canonicalize,clip{format=int4,group-size=32,skip=lm_head,*embed*,layers.1.*}' | FileCheck %s
# CHECK-LABEL: qc.func @main
# CHECK: qc.param "model.layers.0.self_attn.q_proj.weight" : tensor<128x128xf32> {plan = "int4 g32 by clip"}
# CHECK: qc.param "model.layers.1.self_attn.q_proj.weight" : tensor<128x128xf32>{{$}}

# weight-mse needs no calibration; an explicit grid of ratios; the format's default group size.
# RUN: qc-opt zoo:llama-tiny -p 'canonicalize,clip{format=nvfp4,objective=weight-mse,grid=1.0,0.9,0.8}' | FileCheck %s --check-prefix=GRID
# GRID: qc.param "model.layers.0.self_attn.q_proj.weight" : tensor<128x128xf32> {plan = "nvfp4 g16 by clip"}
# GRID: qc.param "lm_head.weight" : tensor<512x128xf32>{{$}}

# RUN: %not --code 2 qc-opt zoo:llama-tiny -p 'clip{format=int4,objective=kl}' 2>&1 | FileCheck %s --check-prefix=ERR
# ERR: error: clip: option 'objective' expects one of weight-mse|output-mse, got 'kl'

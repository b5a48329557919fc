# lorc: a rank-r fp16 correction y = linear(x, Q(W)) + linear(linear(x, A), B) next to each
# planned layer; lower-datatype quantizes the main linear and leaves A and B in fp.
# RUN: qc-opt zoo:llama-tiny -p 'canonicalize,lorc{format=fp4,rank=4,skip=lm_head,*embed*,layers.1.*,*mlp*},lower-datatype{format=fp4,skip=lm_head,*embed*,layers.1.*,*mlp*},dce' | FileCheck %s
# CHECK-LABEL: qc.func @main
# CHECK: %[[Q:.*]] = qc.linear_fp4(%[[X:[a-z0-9_]+]], {{.*}}layer = "model.layers.0.self_attn.q_proj"}
# CHECK-NEXT: %[[A:.*]] = qc.param "model.layers.0.self_attn.q_proj.lorc_a.weight" : tensor<4x128xf16>
# CHECK-NEXT: %[[A32:.*]] = aten._to_copy(%[[A]]) {dtype = f32} : tensor<4x128xf32>
# CHECK-NEXT: %[[T:.*]] = aten.linear(%[[X]], %[[A32]]) : tensor<?x?x4xf32>
# CHECK-NEXT: %[[B:.*]] = qc.param "model.layers.0.self_attn.q_proj.lorc_b.weight" : tensor<128x4xf16>
# CHECK-NEXT: %[[B32:.*]] = aten._to_copy(%[[B]]) {dtype = f32} : tensor<128x4xf32>
# CHECK-NEXT: %[[D:.*]] = aten.linear(%[[T]], %[[B32]]) : tensor<?x?x128xf32>
# CHECK-NEXT: aten.add.Tensor(%[[Q]], %[[D]]) : tensor<?x?x128xf32>
# CHECK-NOT: qc.param "model.layers.0.mlp.down_proj.lorc_a.weight"

# RUN: %not --code 2 qc-opt zoo:llama-tiny -p 'lorc{format=fp4,rank=0}' 2>&1 | FileCheck %s --check-prefix=ERR
# ERR: error: lorc: rank must be >= 1, got 0

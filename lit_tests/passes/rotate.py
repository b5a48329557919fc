# rotate: the residual stream is rotated by an orthogonal matrix folded into the weights, so the
# graph keeps its shape; online-down=true adds an online Hadamard before each down_proj.
# RUN: qc-opt zoo:llama-tiny -p 'canonicalize,fold-norms,rotate{online-down=true}' | FileCheck %s
# CHECK-LABEL: qc.func @main
# CHECK: %embedding = aten.embedding(%model_embed_tokens_weight, %input_ids, 0)
# CHECK: %[[H:.*]] = qc.hadamard(%{{.*}}) : tensor<?x?x256xf32>
# CHECK-NEXT: %{{.*}} = aten.linear(%[[H]], %model_layers_0_mlp_down_proj_weight) : tensor<?x?x128xf32>
# CHECK: %[[H1:.*]] = qc.hadamard(%{{.*}}) : tensor<?x?x256xf32>
# CHECK-NEXT: %{{.*}} = aten.linear(%[[H1]], %model_layers_1_mlp_down_proj_weight) : tensor<?x?x128xf32>
# CHECK-NOT: qc.hadamard
# CHECK: qc.return

# Without online-down nothing is inserted; every linear's weight is rewritten (statistics).
# RUN: qc-opt zoo:stories260k -p 'canonicalize,fold-norms,rotate{kind=random,seed=3}' --pass-statistics -o %t.ir 2>&1 | FileCheck %s --check-prefix=STATS
# RUN: FileCheck %s --check-prefix=PLAIN < %t.ir
# STATS: rotate
# STATS-NEXT: (S) 36 layers-changed
# STATS-NEXT: (S) 0 online-hadamards
# PLAIN-NOT: qc.hadamard

# Tied-embedding models without canonicalize: the missing step, not "no LM head".
# RUN: %not --code 1 qc-opt zoo:stories260k -p 'rotate' --reproducer-dir %t 2>&1 | FileCheck %s --check-prefix=CANON
# CANON: error: rotate: run canonicalize first (-p 'canonicalize,fold-norms,rotate'): the graph still has ops that canonicalize removes

# Norm weights must be folded first (stories260k has trained norm weights).
# RUN: %not --code 1 qc-opt zoo:stories260k -p 'canonicalize,rotate' --reproducer-dir %t 2>&1 | FileCheck %s --check-prefix=UNFOLDED
# UNFOLDED: error: rotate: model.layers.0.input_layernorm has a non-unit weight, which does not commute with a rotation; put fold-norms first (-p 'fold-norms,rotate')

# LayerNorm models are not rotation-invariant.
# RUN: %not --code 1 qc-opt zoo:gpt2-tiny -p 'canonicalize,fold-norms,rotate' --reproducer-dir %t 2>&1 | FileCheck %s --check-prefix=LAYERNORM
# LAYERNORM: error: rotate: transformer.h.0.ln_1 is a LayerNorm, whose mean subtraction does not commute with a rotation; rotate supports pre-norm RMSNorm decoders (Llama, Qwen2, Mistral)

# An online Hadamard needs a known Hadamard order (stories260k's MLP is 172 wide).
# RUN: %not --code 1 qc-opt zoo:stories260k -p 'canonicalize,fold-norms,rotate{online-down=true}' --reproducer-dir %t 2>&1 | FileCheck %s --check-prefix=ORDER
# ORDER: error: rotate: online-down needs a Hadamard matrix of order 172 (the input size of model.layers.0.mlp.down_proj), which is not known; use online-down=false

# RUN: %not --code 2 qc-opt zoo:llama-tiny -p 'rotate{kind=givens}' 2>&1 | FileCheck %s --check-prefix=KIND
# KIND: error: rotate: option 'kind' expects one of hadamard|random, got 'givens'

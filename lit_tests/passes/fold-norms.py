# fold-norms: each norm's weight moves into the linears that read it (q/k/v share one norm, the
# final norm goes into lm_head) and the norm keeps a unit weight. stories260k is a trained Llama
# whose lm_head is tied to the embedding: the embedding gets its own copy, lm_head keeps its name.
# RUN: qc-opt zoo:stories260k -p 'canonicalize,fold-norms' | FileCheck %s
# CHECK-LABEL: qc.func @main
# CHECK: %lm_head_weight = qc.param "lm_head.weight" : tensor<512x64xf32>
# CHECK: %[[EMB:.*]] = qc.param "model.embed_tokens.weight" : tensor<512x64xf32>
# CHECK-NEXT: %embedding = aten.embedding(%[[EMB]], %input_ids)
# CHECK: %[[N:.*]] = aten.mul.Tensor(%model_layers_0_input_layernorm_weight, %{{.*}})
# CHECK-NEXT: aten.linear(%[[N]], %model_layers_0_self_attn_q_proj_weight)
# CHECK: aten.linear(%[[N]], %model_layers_0_self_attn_k_proj_weight)
# CHECK: aten.linear(%[[N]], %model_layers_0_self_attn_v_proj_weight)
# CHECK: aten.linear(%{{.*}}, %lm_head_weight) : tensor<?x?x512xf32>
# CHECK: qc.return

# Statistics: every norm folded, 26 linears rewritten (5 layers x 5 readers, plus lm_head).
# RUN: qc-opt zoo:stories260k -p 'canonicalize,fold-norms' --pass-statistics -o %t.ir 2>&1 | FileCheck %s --check-prefix=STATS
# STATS: fold-norms
# STATS-NEXT: (S) 11 norms-folded
# STATS-NEXT: (S) 0 norms-kept
# STATS-NEXT: (S) 26 layers-changed

# Post-norm models (BERT, MiniLM) add the norm output back into the residual stream, which no
# linear weight can absorb: those norms are kept, and -v says why.
# RUN: qc-opt zoo:bert-tiny -p 'canonicalize,fold-norms' -v -o %t.ir 2>&1 | FileCheck %s --check-prefix=POSTNORM
# POSTNORM: note: fold-norms: kept embeddings.LayerNorm: its output also feeds add (%add_{{[0-9]+}}) (post-norm residual), which no linear weight can absorb
# POSTNORM: note: fold-norms: kept encoder.layer.1.output.LayerNorm: its output also feeds the program output

# Without canonicalize, casts and metadata asserts hide the norms' linears: the missing step is named.
# RUN: %not --code 1 qc-opt zoo:stories260k -p 'fold-norms,rotate' --reproducer-dir %t 2>&1 | FileCheck %s --check-prefix=CANON
# CANON: error: fold-norms: run canonicalize first (-p 'canonicalize,fold-norms'): the graph still has ops that canonicalize removes (%{{.*}}), which hide the norms and linears this pass rewrites

# fold-norms takes no options.
# RUN: %not --code 2 qc-opt zoo:llama-tiny -p 'fold-norms{weight=1}' 2>&1 | FileCheck %s --check-prefix=OPTION
# OPTION: error: fold-norms: unknown option 'weight'; fold-norms takes no options

"""Fake-quantization ops for activations (W4A8) and the KV cache: the public handles.

    %q = qc.quantize_act(%x) {format = "fp8-e4m3", granularity = "token", pow2_scale = false}
    %k = qc.quantize_kv(%add_5) {format = "razer4-kv", group_size = 32, layer = "...k_proj"}

Both are quantize-then-dequantize: same shape and dtype out, values on the format's grid. They
model what a W4A8 kernel or a quantized KV cache does to the numbers, so the compiled program's
quality (KL, perplexity) is the quantized model's, while the graph stays an ordinary float graph
that exports, saves and loads. Rounding and scales come from the formats library (the formats'
own `quantize` then `dequantize`, RTN): nothing here knows a codebook.

pow2_scale (ZeroQuant-FP, arXiv 2307.09782): the paper constrains scales to powers of two so that
casting between FP formats is a bit shift. For an activation scale we round the format's absmax
scale UP to a power of two (`pow2_ceil`, the rule the weight formats use for `scale=pow2`), so the
largest element still fits the grid (no clipping) and the rounding step is at most twice as
coarse.

KV groups run along the last dimension (head_dim) of each token and head: the layout a KV cache
stores, [batch, kv_heads, seq, head_dim]. Quantization is RTN (no clip search): a KV cache is
written online at decode time, one token at a time.

The ops are defined (attributes, allowed formats, `head_dim % group_size == 0`) in
qcompiler/dialect/defs.py and implemented in qcompiler/dialect/impls.py; importing this module
registers them, and keeps the names passes and tests use.
"""

from __future__ import annotations

from qcompiler.dialect.defs import (ACT_FORMATS, ACT_GRANULARITIES, KV_FORMATS, QUANTIZE_ACT,
                                    QUANTIZE_KV)
from qcompiler.dialect.impls import fake_quantize_act, fake_quantize_kv
from qcompiler.dialect.registry import NAMESPACE, overload

ACT_SCHEMA = QUANTIZE_ACT.schema()
KV_SCHEMA = QUANTIZE_KV.schema()

quantize_act = overload("quantize_act")
quantize_kv = overload("quantize_kv")

__all__ = ["ACT_FORMATS", "ACT_GRANULARITIES", "ACT_SCHEMA", "KV_FORMATS", "KV_SCHEMA",
           "NAMESPACE", "fake_quantize_act", "fake_quantize_kv", "quantize_act", "quantize_kv"]

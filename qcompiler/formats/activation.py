"""8-bit formats for activations (and weights): a per-token, per-tensor or per-group fp32 scale.

ZeroQuant-FP (arXiv 2307.09782) finds FP8 activations beat INT8 for LLMs, more so above 1B
parameters; its W4A8 uses E4M3 for activations (the abstract says "FP8 activation"; E4M3 rather
than E5M2 is FORMATS.md's reading and the usual inference choice: activations need precision
more than range once a scale is applied). Both are symmetric: scale = absmax / qmax with
qmax = 448 (E4M3) or 127 (INT8, codes in [-127, 127], stored two's complement as uint8).

Granularity: "token" (one scale per row: per token for activations [T, K], per output channel
for weights [N, K]), "tensor" (one scale) or "group" (groups of `group_size` along K).
`fake_quantize` is the quantize-dequantize a W4A8 pass inserts in front of a matmul: same shape
and dtype out, no packing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from qcompiler.errors import QCompilerError
from qcompiler.formats.base import Encoded, Format, QTensor
from qcompiler.formats.scale_search import ErrorMeasure, round_significand, safe, search_ratio

GRANULARITIES = ("token", "tensor", "group")
SCALE_BITS = 16


@dataclass(frozen=True)
class ActivationFormat(Format):
    """Symmetric 8-bit codes times an fp32 scale; subclasses say how to round and encode."""

    qmax: float = 127.0
    per_row: ClassVar[bool] = True

    # ------------------------------------------------------------- subclass hooks

    def round_scaled(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_scaled(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------- public

    def fake_quantize(self, x: torch.Tensor, granularity: str = "token",
                      group_size: int | None = None) -> torch.Tensor:
        """Quantize-dequantize x [..., K]: same shape and dtype, values on the 8-bit grid."""
        if granularity not in GRANULARITIES:
            raise QCompilerError(f"format '{self.name}': unknown granularity '{granularity}'; "
                                 f"use one of {', '.join(GRANULARITIES)}")
        k = x.shape[-1]
        if not torch.compiler.is_compiling() and not torch.isfinite(x).all():
            raise QCompilerError(f"format '{self.name}': activations contain NaN/Inf")
        g = k
        if granularity == "group":
            g = self.resolve_group_size(k, group_size if group_size is not None else self.default_group_size)
        xg = x.reshape(-1, k // g, g).to(torch.float32)
        s = self._scale(xg, granularity, 1.0)
        out = self.round_scaled(xg / safe(s)) * s
        return out.reshape(x.shape).to(x.dtype)

    def codebook(self, **opts: Any) -> torch.Tensor:
        return self.decode_codes(torch.arange(256, dtype=torch.int32).to(torch.uint8))

    def bits_per_weight(self, group_size: int | None = None) -> float:
        if group_size is None:
            raise QCompilerError(f"format '{self.name}': bits per weight needs a group size or K "
                                 f"(the scale is per token by default)")
        return self.bits + self.group_overhead_bits() / group_size

    # ------------------------------------------------------------- Format hooks

    def _encode(self, wg: torch.Tensor, search: str, measure: ErrorMeasure,
                opts: dict[str, Any], absmax: torch.Tensor | None = None) -> Encoded:
        gran = opts.get("granularity", "token" if wg.shape[1] == 1 else "group")

        def stored(ratio: torch.Tensor) -> torch.Tensor:
            # 16 significant bits: code * scale is then exact in fp32, so the dequantized tensor's
            # absmax is exactly qmax * scale and re-quantizing finds the same scale (idempotence)
            return round_significand(self._scale(wg, gran, ratio, absmax), SCALE_BITS)

        def evaluate(ratio: torch.Tensor) -> torch.Tensor:
            s = stored(ratio)
            y = wg / safe(s)
            return measure(self.round_scaled(y) - y, s)

        s = stored(search_ratio(evaluate, wg, self.bits, search))
        codes = self.encode_scaled(wg / safe(s))
        out_opts = {"granularity": gran} if gran == "tensor" else {}
        return Encoded(codes=codes, scales=s[..., 0], opts=out_opts)

    def _decode(self, codes: torch.Tensor, q: QTensor) -> torch.Tensor:
        return self.decode_codes(codes) * q.scales.to(torch.float32).unsqueeze(-1)

    def needs_absmax(self, opts: dict[str, Any]) -> bool:
        return opts.get("granularity") == "tensor"

    def absmax_scale(self, xg: torch.Tensor, granularity: str) -> torch.Tensor:
        """The absmax scale [rows, groups, 1] (no clipping): what qc.quantize_act rounds up to
        a power of two for pow2_scale."""
        return self._scale(xg, granularity, 1.0)

    def _scale(self, xg: torch.Tensor, granularity: str, ratio: float | torch.Tensor,
               absmax: torch.Tensor | None = None) -> torch.Tensor:
        """fp32 scale [rows, groups, 1] (0 where everything is 0); `absmax`: the whole tensor's
        max |x| when xg is a block of its rows."""
        if granularity == "tensor":
            amax = xg.abs().amax() if absmax is None else absmax
            amax = amax.reshape(1, 1, 1).expand(xg.shape[0], xg.shape[1], 1)
        else:
            amax = xg.abs().amax(-1, keepdim=True)
        return amax * (ratio / self.qmax)

"""`Format` and `QTensor`: what every datatype provides and what quantizing produces.

Passes, kernels and reports ask a `Format` for everything (bits, scale type, code table, bits per
weight, quantize, dequantize) so that nothing outside this package re-implements a codebook.
Formats are frozen dataclasses: one immutable instance per registry name, options travel as call
arguments and end up in `QTensor.opts`.

`QTensor` and `Encoded` are defined in qtensor.py (below chunked.py and canonical.py, which
build them) and re-exported here. The base class owns the checks every format needs (2-D finite input, group size allowed and
dividing K, a known search), the group reshaping, running `_encode` on blocks of rows that fit
the CPU cache (chunked.py), the canonical pass (canonical.py) and the bit packing; a subclass
implements `_encode` (float32 groups [N, K/G, G] -> codes and scales) and `_decode` (the inverse).
Layouts follow docs/CONTRACTS.md.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from qcompiler.errors import QCompilerError
from qcompiler.formats import canonical, chunked, packing
from qcompiler.formats.qtensor import TENSOR_KEYS, Encoded, QTensor
from qcompiler.formats.scale_search import ErrorMeasure, check_search, stream_capturing

ScaleType = Literal["fp16", "e4m3", "e8m0", "e3m3", "pow2", "fp32"]
Role = Literal["weight", "activation", "both"]


@dataclass(frozen=True)
class Format:
    """A quantization datatype. Subclasses implement `_encode`, `_decode` and `codebook`."""

    name: str
    bits: int
    default_group_size: int | None
    group_sizes: tuple[int, ...]
    scale_type: ScaleType
    has_zero_point: bool
    role: Role
    description: str = ""
    default_search: str = "clip"
    # name -> allowed values (None: any value of the right kind), for `quantize(**opts)`
    options: tuple[tuple[str, tuple[Any, ...] | None], ...] = ()
    per_row: ClassVar[bool] = False  # group_size=None means one group per row (activations)
    # encode the dequantized result once more (see `_canonicalize`)
    canonical_pass: ClassVar[bool] = False

    # ------------------------------------------------------------------ public API

    def bits_per_weight(self, group_size: int | None = None) -> float:
        """Storage bits per element including scales, zeros and metadata (per-tensor scalars
        such as NVFP4's global scale are not counted: they vanish per element)."""
        g = self._group_size_for_bits(group_size)
        return self.bits + self.group_overhead_bits() / g

    def group_overhead_bits(self) -> int:
        """Bits stored once per group (scale, zero point, special-value index)."""
        return {"fp16": 16, "fp32": 32, "e4m3": 8, "e8m0": 8, "e3m3": 8, "pow2": 8}[self.scale_type]

    def codebook(self, **opts: Any) -> torch.Tensor:
        """Code -> value table (float32, index = code), before the scale is applied."""
        raise NotImplementedError

    def grid(self, **opts: Any) -> torch.Tensor:
        """Alias of `codebook`, the values a kernel's decode must reproduce."""
        return self.codebook(**opts)

    def quantize(self, w: torch.Tensor, group_size: int | None = None, *, search: str | None = None,
                 x: torch.Tensor | None = None, hessian: torch.Tensor | None = None,
                 **opts: Any) -> QTensor:
        """Quantize a [N, K] tensor, groups of `group_size` along K.

        search: "clip" (scale search, default for weight formats) or "rtn" (absmax, no search).
        x: optional calibration activations [T, K]: the search then minimises output error.
        hessian: instead of x, each group's block of xᵀx [K / group, group, group] (GPTQ).
        """
        search = self.default_search if search is None else search
        check_search(self.name, search)
        opts = self._check_options(opts)
        w, absmax = self._check_input(w)
        n, k = w.shape
        g = self.resolve_group_size(k, group_size)
        if x is not None and x.shape[-1] != k:
            raise QCompilerError(f"format '{self.name}': calibration activations have "
                                 f"{x.shape[-1]} features, the weight has K={k}")
        if hessian is not None and tuple(hessian.shape) != (k // g, g, g):
            raise QCompilerError(f"format '{self.name}': group Hessians must be "
                                 f"[{k // g}, {g}, {g}], got {list(hessian.shape)}")
        measure = ErrorMeasure(x, g, self.name, hessian)
        wg = w.detach().to(torch.float32).reshape(n, k // g, g)
        enc = chunked.encode(self, wg, search, measure, opts,
                             absmax if self.needs_absmax(opts) else None)
        return QTensor(format=self.name, shape=(n, k), group_size=g, codes=enc.codes,
                       scales=enc.scales, zeros=enc.zeros, meta=enc.meta,
                       global_scale=enc.global_scale, opts=dict(enc.opts))

    def dequantize(self, q: QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The [N, K] tensor that `q` stands for."""
        if q.format != self.name:
            raise QCompilerError(f"format '{self.name}' cannot dequantize a '{q.format}' tensor")
        n, k = q.shape
        codes = packing.unpack(q.codes, self.bits, k).reshape(n, k // q.group_size, q.group_size)
        return self._decode(codes, q).reshape(n, k).to(dtype)

    def resolve_group_size(self, k: int, group_size: int | None) -> int:
        """The group size to use for K, or a one-line error that says which one would work."""
        if group_size is None:
            group_size = k if self.per_row or self.default_group_size is None else self.default_group_size
        if group_size == k and self.per_row:
            return k
        if group_size not in self.group_sizes:
            allowed = ", ".join(str(g) for g in self.group_sizes)
            raise QCompilerError(f"format '{self.name}': group size {group_size} is not allowed "
                                 f"(allowed: {allowed})")
        if k % group_size:
            fits = [g for g in self.group_sizes if k % g == 0]
            allowed = ", ".join(str(g) for g in self.group_sizes)
            hint = (f"use group size {max(fits)}" if fits else
                    f"no allowed group size ({allowed}) divides K; pad K to a multiple of "
                    f"{min(self.group_sizes)}")
            raise QCompilerError(f"format '{self.name}': group size {group_size} does not divide "
                                 f"K={k}; {hint}")
        return group_size

    def needs_canonical_pass(self, opts: dict[str, Any]) -> bool:
        """Whether some groups have several exact encodings under these options."""
        return self.canonical_pass

    def needs_absmax(self, opts: dict[str, Any]) -> bool:
        """Whether `_encode` needs the whole tensor's max |w| (a per-tensor scale)."""
        return False

    def chunk_rows(self, n: int, k: int, measure: ErrorMeasure, search: str) -> int:
        """Rows quantized together (chunked.py): about `chunked.CHUNK_ELEMENTS` weights, so a
        search's intermediates stay in the CPU cache."""
        return chunked.default_rows(n, k)

    def _canonicalize(self, enc: Encoded, search: str, opts: dict[str, Any],
                      absmax: torch.Tensor | None = None) -> Encoded:
        """The encoding that a re-quantization of `enc`'s own values would choose.

        Some groups have several exact encodings (a sparse NVFP4 block 4 * 2e is also 6 * 4e/3
        when that scale is representable; a RaZeR group 8s, 0, ... is also 6 * 4s/3). The
        search returns the first exact candidate it meets for already-quantized values, which
        need not be the encoding it chose for the original ones, so quantize(dequantize(q))
        could differ from q in codes and scales (never in values). Encoding the dequantized
        values once more (weight MSE objective) returns that first exact candidate, a fixed
        point: quantizing again gives the same codes, scales and metadata. A group whose values
        this pass would change keeps its first encoding. Costs one more search, which stops
        early: for exact values the first candidates already have zero error (RunningBest).
        `absmax` is the whole dequantized tensor's max |value| (formats with a per-tensor scale).
        """
        return canonical.canonicalize(self, enc, search, opts, absmax)

    def _ambiguous_groups(self, enc: Encoded, opts: dict[str, Any]) -> torch.Tensor | None:
        """[N, G] bool: groups whose values MAY have an exact encoding other than `enc`'s (the
        canonical pass re-encodes only their rows), or None: any group may (canonical.py)."""
        return None

    # ------------------------------------------------------------------ for subclasses

    def _encode(self, wg: torch.Tensor, search: str, measure: ErrorMeasure,
                opts: dict[str, Any], absmax: torch.Tensor | None = None) -> Encoded:
        """Float32 groups [N, G, gs] -> unpacked codes and side tensors. `absmax` (0-d tensor)
        is the max |w| of the WHOLE tensor when `needs_absmax`: wg may be a block of its rows."""
        raise NotImplementedError

    def _decode(self, codes: torch.Tensor, q: QTensor) -> torch.Tensor:
        raise NotImplementedError

    def _group_size_for_bits(self, group_size: int | None) -> int:
        g = self.default_group_size if group_size is None else group_size
        if g is None:
            raise QCompilerError(f"format '{self.name}': bits per weight needs a group size "
                                 f"(it is per-token by default)")
        if g not in self.group_sizes and not self.per_row:
            allowed = ", ".join(str(x) for x in self.group_sizes)
            raise QCompilerError(f"format '{self.name}': group size {g} is not allowed "
                                 f"(allowed: {allowed})")
        return g

    def _check_options(self, opts: dict[str, Any]) -> dict[str, Any]:
        allowed = dict(self.options)
        out = {}
        for key, value in opts.items():
            if key not in allowed:
                known = ", ".join(sorted(allowed)) or "none"
                close = difflib.get_close_matches(key, list(allowed), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise QCompilerError(f"format '{self.name}' has no option '{key}' "
                                     f"(options: {known}){hint}")
            choices = allowed[key]
            if choices is not None and value not in choices:
                raise QCompilerError(f"format '{self.name}': option {key}={value!r} is not one of "
                                     f"{', '.join(map(str, choices))}")
            out[key] = value
        return out

    def _check_input(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """w, and its max |w| as a float32 0-d tensor (one min/max pass also finds NaN/Inf)."""
        if not isinstance(w, torch.Tensor) or w.dim() != 2:
            shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise QCompilerError(f"format '{self.name}': expected a 2-D [N, K] tensor, got {shape}")
        if not w.is_floating_point():
            raise QCompilerError(f"format '{self.name}': expected a floating-point tensor, "
                                 f"got {w.dtype}")
        if w.numel() == 0:
            return w, torch.zeros((), dtype=torch.float32, device=w.device)
        lo, hi = torch.aminmax(w.detach())
        absmax = torch.maximum(hi, -lo).to(torch.float32)
        # the NaN/Inf check reads absmax on the host: a synchronization, which a CUDA graph
        # capture cannot contain (a KV4 cache quantizes each decode step's keys and values), so
        # captured steps skip it; non-finite inputs then give non-finite or clamped codes
        # instead of this error (eager steps and every weight quantization still check)
        if not stream_capturing() and not bool(torch.isfinite(absmax)):
            bad = ~torch.isfinite(w)
            count = int(bad.sum())
            first = [int(i) for i in bad.nonzero()[0]]
            raise QCompilerError(f"format '{self.name}': the tensor has {count} NaN/Inf value(s) "
                                 f"(first at {first}); quantization needs finite values")
        return w, absmax

"""`lorc`: ZeroQuant's Low-Rank Compensation of the weight quantization error.

    gptq{format=fp4},lorc{rank=8,format=fp4},lower-datatype{format=fp4}

For each selected linear y = x Wᵀ (+ b): Q(W) is the layer's weight plan when it has one in this
format and group size (so lorc composes with clip/gptq, as ZeroQuant-FP uses it after GPTQ),
else the format's own quantization of W (recorded as a plan by lorc). The error E = W − Q(W)
gets a rank-r SVD, E ≈ U_r Σ_r V_rᵀ, kept as two small fp16 matrices
A = Σ_r^½ V_rᵀ [r, K] and B = U_r Σ_r^½ [N, r] (the balanced split keeps both in fp16 range),
stored as params `<layer>.lorc_a.weight` / `<layer>.lorc_b.weight`, and the graph becomes

    y = linear(x, Q(W), b) + linear(linear(x, A), B)

The two small linears stay in floating point: lower-datatype's default skip has `*.lorc_*`, and
when the model is not fp16 their weights reach them through an explicit cast, so they are not
constant-weight linears for later weight passes either. A layer whose E is exactly zero (or
rank 0) gets no extra linears.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from qcompiler.errors import PassError, QCompilerError
from qcompiler.ir.meta import infer_node_meta
from qcompiler.pass_registry import register_pass
from qcompiler.passes._scale_modes import ScaleMode, plan_scale, scale_options
from qcompiler.passes._weight_common import DEFAULT_SKIP, select_layers, weight_format
from qcompiler.passes_base import Pass, PassContext, PassResult
from qcompiler.weight_plan import original_weight, record_plan, valid_plan

KEEP_META = ("stack_trace", "nn_module_stack", "source_fn_stack", "torch_fn")


@register_pass
@dataclass(frozen=True)
class Lorc(Pass):
    """Add a rank-r fp16 correction of each layer's weight quantization error (ZeroQuant LoRC)."""

    name = "lorc"
    format: str
    rank: int = 8
    group_size: int | None = None
    skip: tuple[str, ...] = DEFAULT_SKIP
    scale: ScaleMode | None = None  # the lowering's scale constraint (passes/_weight_common.py)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")

    def apply(self, program: Any, ctx: PassContext) -> PassResult:
        fmt = weight_format(self.name, self.format)
        scale_options(self.name, fmt, self.scale)  # a one-line error before any work
        layers = list(select_layers(self.name, program, fmt, self.group_size, self.skip, ctx))
        added = 0
        for layer in ctx.progress(layers, total=len(layers), desc=self.name):
            w = original_weight(program, layer.name, layer.weight).detach()
            w_hat = self._quantized(program, fmt, layer, w)
            a, b = low_rank(w.to(torch.float32) - w_hat.to(torch.float32), self.rank)
            if a is None:
                continue
            self._rewrite(program, layer, a, b, w.dtype)
            added += 1
        if added:
            program.gm.recompile()
        return PassResult(bool(layers), {"layers-planned": len(layers), "lorc-added": added})

    def _quantized(self, program: Any, fmt: Any, layer: Any, w: torch.Tensor) -> torch.Tensor:
        """Q(W): the layer's plan in this format and group size, else quantize and plan it."""
        record = valid_plan(program, layer.name, layer.weight)
        opts = scale_options(self.name, fmt, self.scale)
        wanted = (fmt.name, layer.group, opts.get("scale", "fp16"))
        if record is None or (record["format"], record["group_size"], plan_scale(record)) != wanted:
            try:
                qt = fmt.quantize(w.to(torch.float32), group_size=layer.group, **opts)
            except QCompilerError as e:
                raise PassError(self.name, f"{layer.name}: {e}") from None
            record_plan(program, layer.name, layer.weight, qt, by=self.name)
        return program.get_tensor(layer.weight)

    def _rewrite(self, program: Any, layer: Any, a: torch.Tensor, b: torch.Tensor,
                 dtype: torch.dtype) -> None:
        graph: fx.Graph = program.graph
        node = layer.node
        x = node.args[0]
        users = list(node.users)
        names = []
        for suffix, value in (("lorc_a", a), ("lorc_b", b)):
            names.append(program.add_tensor(f"{layer.name}.{suffix}.weight", value))
        with graph.inserting_after(node):
            a_node = self._weight_node(graph, names[0], dtype)
        with graph.inserting_after(a_node):
            t = graph.call_function(torch.ops.aten.linear.default, (x, a_node))
            infer_node_meta(t)
        with graph.inserting_after(t):
            b_node = self._weight_node(graph, names[1], dtype)
        with graph.inserting_after(b_node):
            d = graph.call_function(torch.ops.aten.linear.default, (t, b_node))
            infer_node_meta(d)
        with graph.inserting_after(d):
            out = graph.call_function(torch.ops.aten.add.Tensor, (node, d))
            infer_node_meta(out)
        for key in KEEP_META:
            if key in node.meta:
                for new in (t, d, out):
                    new.meta[key] = node.meta[key]
        for user in users:
            user.replace_input_with(node, out)

    @staticmethod
    def _weight_node(graph: fx.Graph, name: str, dtype: torch.dtype) -> fx.Node:
        """The fp16 param, cast to the model dtype when that is not fp16."""
        attr = graph.get_attr(name)
        infer_node_meta(attr)
        if dtype == torch.float16:
            return attr
        with graph.inserting_after(attr):
            cast = graph.call_function(torch.ops.aten._to_copy.default, (attr,), {"dtype": dtype})
            infer_node_meta(cast)
        return cast


def low_rank(e: torch.Tensor, rank: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A [r, K] and B [N, r] in fp16 with B A ≈ E (truncated SVD, balanced split)."""
    if not bool(e.any()):
        return None, None
    u, s, vh = torch.linalg.svd(e.to(torch.float64), full_matrices=False)
    r = min(rank, int(s.shape[0]))
    root = s[:r].sqrt()
    a = (root[:, None] * vh[:r]).to(torch.float16)
    b = (u[:, :r] * root[None, :]).to(torch.float16)
    return a, b

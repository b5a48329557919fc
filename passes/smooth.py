"""`smooth`: SmoothQuant (arXiv 2211.10438) per-channel scale migration, and the machinery that
`aqas` shares with it.

    smooth{alpha=0.5}

An activation X [T, K] with a few huge channels quantizes badly per token: the outliers set the
scale and every other channel rounds to a handful of levels. For a linear y = X·Wᵀ the identity
y = (X·diag(s)⁻¹)·(W·diag(s))ᵀ moves range from activations to weights channel by channel.
SmoothQuant picks s_j = max|X_j|^α / max|W_j|^(1−α) (α = migration strength, 0.5 by default).
The division by s costs nothing at run time when it is folded into the op that produced X:

- norm → linears (q/k/v after input_layernorm, gate/up after post_attention_layernorm): the
  norm's weight (and LayerNorm's bias) is divided by s; every consumer of the normalised tensor
  shares the one s (a group is skipped if that tensor has a non-linear user or a skipped layer);
- o_proj: its input is the attention output, linear in v per channel, so v_proj's rows (and
  bias) are divided by s. With grouped-query attention each kv head serves `heads/kv_heads`
  query heads, so s is chosen per v_proj row and repeated over those heads (channel h·D+d of
  o_proj's input comes from v row (h // rep)·D+d, as HF's repeat_kv lays them out);
- down_proj: its input is act(gate)·up, linear in up per channel: up_proj's rows are divided.

Anything else (fused QKV, odd layouts, shared weights) is skipped and counted, never guessed.
The transformation keeps the floating-point function (tests check 1e-4 relative); it must run
before lower-datatype, on aten.linear layers. Statistics come from qcompiler.calibration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from qcompiler.errors import PassError
from qcompiler.pass_registry import register_pass
from qcompiler.passes.lower_datatype import matches
from qcompiler.passes_base import Pass, PassContext, PassResult
from qcompiler.program import Program

aten = torch.ops.aten
LAYOUT_OPS = {aten.reshape.default, aten.view.default, aten.clone.default,
              aten._unsafe_view.default, aten.transpose.int}
MIN_SCALE = 1e-5


@dataclass(frozen=True)
class ScaleGroup:
    """Linears that read one activation, and the tensors that absorb 1/s (its producer's)."""

    name: str  # the producer (norm or linear) that absorbs 1/s
    layers: tuple[str, ...]  # consumer layers (calibration statistics keys)
    weights: tuple[str, ...]  # consumer weight tensors: columns multiplied by s
    inverse: tuple[str, ...]  # producer tensors: elements (1-D) or rows (2-D) divided by s
    repeat: int = 1  # GQA: consecutive blocks of `block` channels repeated this many times
    block: int = 0
    from_linear: bool = False  # the producer is a linear (v_proj, up_proj), not a norm

    def describe(self) -> str:
        """`producer -> consumers` for notes (-vv), with the GQA repeat when there is one."""
        where = "rows" if self.from_linear else "weight"
        rep = f" (GQA repeat {self.repeat})" if self.repeat > 1 else ""
        return f"{self.name} {where} absorb 1/s of {', '.join(self.layers)}{rep}"

    def expand(self, s: torch.Tensor) -> torch.Tensor:
        """Per producer channel -> per consumer input channel."""
        if self.repeat == 1:
            return s
        return s.view(-1, 1, self.block).expand(-1, self.repeat, self.block).reshape(-1)

    def reduce(self, v: torch.Tensor) -> torch.Tensor:
        """Per consumer input channel -> per producer channel (the max over repeats)."""
        if self.repeat == 1:
            return v
        return v.view(-1, self.repeat, self.block).amax(1).reshape(-1)


# ---- finding groups ----------------------------------------------------------------------------
def _const(node: Any) -> str | None:
    return str(node.target) if isinstance(node, fx.Node) and node.op == "get_attr" else None


def _only_use(program: Program, node: fx.Node) -> bool:
    """A get_attr read by one node, and no other get_attr naming the same tensor."""
    same = [n for n in program.graph.find_nodes(op="get_attr") if n.target == node.target]
    return len(node.users) == 1 and len(same) == 1


def _linear_parts(node: fx.Node) -> tuple[str, str | None]:
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    return str(node.args[1].target), _const(bias)


def _producer_inverse(program: Program, producer: Any) -> tuple[tuple[str, ...], bool] | str:
    """Tensors that absorb 1/s for a graph_match `Producer` (and whether they are linear rows),
    or why there are none."""
    from qcompiler.graph_match import value_uses

    if producer.kind == "norm":
        parts = [t for t in (producer.norm.weight, producer.norm.bias) if t is not None]
        if producer.norm.weight is None:
            return f"{producer.norm.name} has no weight to absorb 1/s"
        if producer.norm.offset:  # Gemma's (1 + w): dividing w by s would not divide γ
            return f"{producer.norm.name} scales by ({producer.norm.offset:g} + w)"
        if not all(_only_use(program, t) for t in parts):
            return f"{producer.norm.name}'s weight is shared"
        return tuple(str(t.target) for t in parts), False
    if producer.kind in ("linear", "gated"):
        up = producer.linear
        if not _const(up.args[1]) or len(value_uses(up)) != 1 or not _only_use(program, up.args[1]):
            return f"{up.name}'s output or weight has other uses"
        w, b = _linear_parts(up)
        return ((w,) if b is None else (w, b)), True
    return "no norm, up_proj or v_proj to fold 1/s into"


def _v_inverse(program: Program, x: fx.Node, sites: list[Any],
               ) -> tuple[tuple[str, ...], int, int] | None:
    """o_proj's input from sdpa: v_proj's rows (and bias), with the GQA repeat and head_dim."""
    chain, n = [], x
    while n.op == "call_function" and n.target in LAYOUT_OPS:
        chain.append(n)
        n = n.args[0]
    transposes = [c for c in chain if c.target == aten.transpose.int]
    if len(transposes) != 1 or {transposes[0].args[1], transposes[0].args[2]} != {1, 2}:
        return None
    site = next((s for s in sites if s.sdpa is n), None)
    if site is None:
        return None
    v = site.value  # must be transpose(view(v_proj(x))), nothing else in between
    while v is not site.v_proj and v.op == "call_function" and v.target in LAYOUT_OPS:
        v = v.args[0]
    if (v is not site.v_proj or len(v.users) != 1 or v.target != aten.linear.default
            or not _only_use(program, v.args[1])):
        return None
    if site.heads % site.kv_heads:
        return None
    w, b = _linear_parts(site.v_proj)
    if program.get_tensor(w).shape[0] != site.kv_heads * site.head_dim:
        return None
    return ((w,) if b is None else (w, b)), site.heads // site.kv_heads, site.head_dim


def find_groups(program: Program, skip: tuple[str, ...], pass_name: str,
                ) -> tuple[list[ScaleGroup], list[str]]:
    """The scale groups of the program, and one line per linear input that was skipped (why).

    Producers (norm, linear, gated MLP) and their consumers come from qcompiler.graph_match and
    qcompiler.graph_norms; attention outputs (o_proj's input) from quantize-kv's attention
    matcher.
    """
    from qcompiler.graph_match import consumer_linears, linear_producer
    from qcompiler.graph_norms import find_norms
    from qcompiler.ops import is_quantized_linear
    from qcompiler.passes.quantize_kv import attention_sites

    if any(is_quantized_linear(n.target) for n in program.nodes("call_function")):
        raise PassError(pass_name, "the program already has quantized qc.linear_* layers; run "
                        f"{pass_name} before lower-datatype")
    try:
        sites = attention_sites(program, pass_name, encoders=True)
    except PassError:
        sites = []  # no recognisable attention: o_proj groups are skipped below
    norms = find_norms(program)
    producers: dict[fx.Node, Any] = {}
    for node in program.linears():
        producer = linear_producer(node, norms)
        producers.setdefault(producer.node, producer)
    groups, skipped = [], []
    for value, producer in producers.items():
        linears, others = consumer_linears(value)
        layers = tuple(str(n.args[1].target).removesuffix(".weight") for n in linears)
        weights = tuple(str(n.args[1].target) for n in linears)
        why = None
        if any(matches(layer, p) for layer in layers for p in skip):
            why = "skip pattern"
        elif others:
            why = f"its input also feeds {others[0].name}"
        elif not all(_const(n.args[1]) and _only_use(program, n.args[1]) for n in linears):
            why = "a weight is shared"
        if why is None:
            found = _producer_inverse(program, producer)
            if isinstance(found, str) and producer.kind == "other":
                v = _v_inverse(program, value, sites)
                if v is not None:
                    inv, repeat, head_dim = v
                    groups.append(ScaleGroup(inv[0].removesuffix(".weight"), layers, weights,
                                             inv, repeat, head_dim, from_linear=True))
                    continue
            if isinstance(found, str):
                why = found
            else:
                inv, from_linear = found
                groups.append(ScaleGroup(inv[0].removesuffix(".weight"), layers, weights, inv,
                                         from_linear=from_linear))
                continue
        skipped.append(f"{', '.join(layers)}: {why}")
    # Groups whose 1/s lands on a linear's rows go first: the norm groups that also read those
    # linears (v_proj in q/k/v, up_proj in gate/up) then see their final rows, so AQAS's error
    # and SmoothQuant's weight ranges are those of the weights that will be quantized.
    groups.sort(key=lambda g: not g.from_linear)
    return groups, skipped


# ---- applying scales ---------------------------------------------------------------------------
def apply_scales(program: Program, group: ScaleGroup, s: torch.Tensor) -> None:
    """W ← W·diag(s) for every consumer, producer ← producer / s (new tensors, never in place)."""
    s = s.to(torch.float32)
    full = group.expand(s)
    for name in group.weights:
        w = program.get_tensor(name)
        program.set_tensor(name, (w.to(torch.float32) * full[None, :]).to(w.dtype))
    for name in group.inverse:
        t = program.get_tensor(name)
        inv = s if t.dim() == 1 else s[:, None]
        program.set_tensor(name, (t.to(torch.float32) / inv).to(t.dtype))


def weight_absmax(program: Program, group: ScaleGroup) -> torch.Tensor:
    """max |W[:, c]| over every consumer, per producer channel."""
    cols = torch.stack([program.get_tensor(w).detach().abs().amax(0).to(torch.float32)
                        for w in group.weights]).amax(0)
    return group.reduce(cols)


def smooth_scales(act_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's s = max|X|^α / max|W|^(1−α); 1 where a channel is all zero."""
    s = act_absmax.pow(alpha) / w_absmax.pow(1 - alpha)
    ok = (act_absmax > 0) & (w_absmax > 0) & torch.isfinite(s)
    return torch.where(ok, s.clamp(min=MIN_SCALE), torch.ones_like(s))


def calibrate(program: Program, groups: list[ScaleGroup], ctx: PassContext,
              max_samples: int = 0) -> dict[str, Any]:
    """Statistics of each group's input (keyed by the group's first layer)."""
    from qcompiler.calibration import calibration_batches, collect_linear_stats

    batches = calibration_batches(program, ctx)
    return collect_linear_stats(program, batches, [g.layers[0] for g in groups], absmax=True,
                                max_samples=max_samples, ctx=ctx)


@register_pass
@dataclass(frozen=True)
class Smooth(Pass):
    """SmoothQuant: migrate per-channel scales from activations into weights."""

    name = "smooth"
    alpha: float = 0.5
    skip: tuple[str, ...] = ("lm_head",)

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")

    def apply(self, program: Program, ctx: PassContext) -> PassResult:
        groups, skipped = find_groups(program, self.skip, self.name)
        for line in skipped:
            ctx.log(f"{self.name}: skipped {line}", level=2)
        if not groups:
            return PassResult(False, {"groups-changed": 0, "groups-skipped": len(skipped)})
        stats = calibrate(program, groups, ctx)
        for group in groups:
            ctx.log(f"{self.name}: {group.describe()}", level=2)
            act = group.reduce(stats[group.layers[0]].absmax)
            apply_scales(program, group, smooth_scales(act, weight_absmax(program, group),
                                                       self.alpha))
        return PassResult(True, {"groups-changed": len(groups), "groups-skipped": len(skipped),
                                 "layers-changed": sum(len(g.layers) for g in groups)})

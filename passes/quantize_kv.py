"""`quantize-kv`: fake-quantize the keys and values that a KV cache would store.

    quantize-kv{format=razer4}                 (groups of head_dim: one scale per token and head)
    quantize-kv{format=int4,group-size=32}

What is matched (per `aten.scaled_dot_product_attention`, the op Llama, Qwen2 and Mistral export
their attention as): a KV cache stores keys after RoPE and values after their projection,
reshaped to [batch, kv_heads, seq, head_dim], *before* grouped-query attention repeats the KV
heads (HF `past_key_value.update` runs before `repeat_kv`). So from sdpa's key and value operands
we walk back through the head-repetition ops (unsqueeze/expand/reshape/view/clone) to the first
other node: that tensor is what the cache holds, and it becomes
`qc.quantize_kv(x) {format, group_size, layer}`, all its users rewired. The walk is checked: the
tensor must be 4-D with the query's head_dim, and walking further back it must reach exactly one
linear (its projection, `layer`) that is neither the query's nor the other operand's linear, so a
fused QKV projection (Phi-3's qkv_proj, GPT-2's c_attn) is reported, not silently mis-matched.

Formats: `razer4` uses the KV variant `razer4-kv` (RaZeR's special values, RTN; see
formats/razer.py for the choices we made), `fp4` and `int4` (asymmetric) the weight formats with
RTN, groups along head_dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.fx as fx

from qcompiler.errors import PassError
from qcompiler.ir.meta import infer_node_meta
from qcompiler.pass_registry import register_pass
from qcompiler.passes.quantize_act import layer_name
from qcompiler.passes_base import Pass, PassContext, PassResult
from qcompiler.program import Program

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default
# ops repeat_kv is made of (and layout no-ops): walked through from sdpa's key/value operands
REPEAT_OPS = {aten.unsqueeze.default, aten.expand.default, aten.reshape.default,
              aten.view.default, aten.clone.default, aten._unsafe_view.default}
KV_FORMAT = {"razer4": "razer4-kv", "fp4": "fp4", "int4": "int4"}
SUPPORTED = "separate q/k/v projections feeding scaled_dot_product_attention (Llama, Qwen2, Mistral)"


@dataclass(frozen=True)
class AttentionSite:
    """One attention: the sdpa node, the cached key/value tensors, their projections."""

    sdpa: fx.Node
    key: fx.Node  # [B, kv_heads, S, head_dim], after RoPE, before head repetition
    value: fx.Node
    q_proj: fx.Node
    k_proj: fx.Node
    v_proj: fx.Node

    @property
    def head_dim(self) -> int:
        return int(self.key.meta["val"].shape[-1])

    @property
    def kv_heads(self) -> int:
        return int(self.key.meta["val"].shape[1])

    @property
    def heads(self) -> int:
        return int(self.sdpa.args[0].meta["val"].shape[1])


def strip_repeat(node: fx.Node) -> fx.Node:
    """Walk back from an sdpa operand through head-repetition ops to the cached tensor."""
    while (node.op == "call_function" and node.target in REPEAT_OPS
           and isinstance(node.args[0], fx.Node)):
        node = node.args[0]
    return node


def source_linears(node: fx.Node) -> list[fx.Node]:
    """The nearest linear on every path back from `node` (stopping at each linear found)."""
    found: dict[fx.Node, None] = {}
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n is not node and layer_name(n) is not None:
            found[n] = None
            continue
        stack.extend(a for a in n.all_input_nodes if a.op != "get_attr")
    return list(found)


def attention_sites(program: Program, pass_name: str, *,
                    encoders: bool = False) -> list[AttentionSite]:
    """Every attention of the program, or a one-line PassError saying what is not supported.

    Encoders are refused (they have no KV cache) unless `encoders`: smooth/awq only need the
    v_proj -> attention output path, which an encoder's attention has too."""
    if program.kind == "encoder" and not encoders:
        raise PassError(pass_name, "this is an encoder model: it has no KV cache; run "
                        f"{pass_name} on decoder (causal-lm) models")
    sites = []
    for sdpa in program.nodes("call_function", SDPA):
        query, key, value = (strip_repeat(a) for a in sdpa.args[:3])
        projs = []
        for role, n in (("query", query), ("key", key), ("value", value)):
            linears = source_linears(n)
            if len(linears) != 1:
                raise PassError(pass_name, f"the {role} of attention %{sdpa.name} comes from "
                                f"{len(linears)} linears, expected 1; supported: {SUPPORTED}")
            projs.append(linears[0])
        if len(set(projs)) != 3:
            raise PassError(pass_name, f"attention %{sdpa.name} uses a fused QKV projection "
                            f"({layer_name(projs[1])}); not supported, only {SUPPORTED}")
        for role, n in (("key", key), ("value", value)):
            val = n.meta.get("val")
            q_dim = sdpa.args[0].meta["val"].shape[-1]
            if val is None or val.dim() != 4 or val.shape[-1] != q_dim:
                raise PassError(pass_name, f"the {role} of attention %{sdpa.name} (%{n.name}) is "
                                f"not a [batch, heads, seq, head_dim] tensor; supported: "
                                f"{SUPPORTED}")
        sites.append(AttentionSite(sdpa, key, value, *projs))
    if not sites:
        raise PassError(pass_name, "found no scaled_dot_product_attention in the graph; "
                        f"supported: {SUPPORTED}")
    return sites


@register_pass
@dataclass(frozen=True)
class QuantizeKV(Pass):
    """Fake-quantize cached keys (after RoPE) and values along head_dim groups."""

    name = "quantize-kv"
    format: Literal["razer4", "fp4", "int4"] = "razer4"
    group_size: int | None = None  # None: head_dim (one scale per token and head)

    def __post_init__(self) -> None:
        if self.group_size is not None and self.group_size <= 0:
            raise ValueError(f"group-size must be positive, got {self.group_size}")

    def apply(self, program: Program, ctx: PassContext) -> PassResult:
        from qcompiler import formats
        from qcompiler.act_ops import quantize_kv

        fmt = formats.get(KV_FORMAT[self.format])
        changed = 0
        for site in attention_sites(program, self.name):
            group = self.group_size or site.head_dim
            if group not in fmt.group_sizes or site.head_dim % group:
                fits = [g for g in fmt.group_sizes if site.head_dim % g == 0]
                if not fits:
                    hint = "" if fmt.name == "razer4-kv" else "; format=razer4 has groups of 8"
                    raise PassError(self.name, f"head_dim={site.head_dim} is not a multiple of "
                                    f"any group size {fmt.name} supports "
                                    f"({', '.join(map(str, fmt.group_sizes))}){hint}")
                raise PassError(self.name, f"group size {group} does not fit head_dim="
                                f"{site.head_dim} for {fmt.name} (use one of "
                                f"{', '.join(map(str, fits))})")
            for cached, proj in ((site.key, site.k_proj), (site.value, site.v_proj)):
                users = list(cached.users)
                if len(users) == 1 and users[0].target == quantize_kv:
                    continue  # already quantized
                with program.graph.inserting_after(cached):
                    q = program.graph.create_node("call_function", quantize_kv, (cached,), {
                        "format": fmt.name, "group_size": group, "layer": layer_name(proj)},
                        name=f"{cached.name}_kv")
                infer_node_meta(q)
                cached.replace_all_uses_with(q, delete_user_cb=lambda u, q=q: u is not q)
                changed += 1
        if changed:
            program.recompile()
        return PassResult(changed > 0, {"tensors-changed": changed})

"""The decode program: a compiled causal LM's graph rewritten to run with a static KV cache.

A `Program` maps a whole sequence to logits, so generating with it alone re-runs the prefix for
every token. `build_decode_program` derives, from the same graph and sharing its tensors, a
second graph that takes the cache explicitly, as gpt-fast and Hugging Face's StaticCache do:

    qc.func @decode(%input_ids: [B, S], %position_ids: [B, S], %cache_position: [S],
                    %attn_mask: [B, 1, S, L] (bool), %k_cache_0: [B, Hkv, L, D], %v_cache_0, ...)
        -> (logits [B, S, V], k_cache_0, v_cache_0, ...)

- `position_ids` replaces the positions the graph computed as `arange(S)` (they feed RoPE);
  per sequence, so left-padded prompts get the positions Hugging Face gives them.
- every attention's key and value, taken where the KV cache lives (after RoPE and after any
  `qc.quantize_kv`, before GQA's head repetition), is written into its cache at the slots
  `cache_position` (`aten.index_copy_`, in place), and the attention reads the whole cache
  (`aten.repeat_interleave` for GQA) under `attn_mask`, which says which slots each query sees
  (causality and padding: the caller builds it, see `qcompiler.generation`).
- behind a `qc.quantize_kv` the cache stores the KV format's packed parts instead
  (`k_cache_0_codes`, `k_cache_0_scales`, ...; qcompiler/kv_cache.py);
- the graph's own causal-mask computation becomes dead code and is removed.

The same program does prefill (S = prompt length, cache_position = 0..T-1) and decoding (S = 1).
It is derived at load time from program.pt2, so the artifact stores no second program and the
two can never disagree about weights. `qcompile run OUT --print-decode-ir` prints it.

`dequantize_weights=True` replaces every `qc.linear_<fmt>` by `aten.linear` on its weight
dequantized once (qcompiler/dequantized_linears.py): the CPU strategy; on CUDA the generated
kernels read the codes.

Graphs this rewrite does not understand (no rotary positions, e.g. GPT-2's learned positions)
raise `DecodeUnsupported`, and so does a rewrite whose logits differ from the program's on a
seeded probe (qcompiler/decode_check.py); generation then falls back to the uncached loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from qcompiler.dequantized_linears import dequantize_linears
from qcompiler.errors import DecodeUnsupported

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default
RESHAPES = (aten.reshape.default, aten.view.default, aten._unsafe_view.default)
INPUTS = ("input_ids", "position_ids", "cache_position", "attn_mask")


@dataclass
class DecodeProgram:
    """The rewritten graph and its cache inputs: (kv_heads, width, dtype) per cache tensor, in
    input order (k then v per layer; a quantized cache has one tensor per packed part)."""

    gm: fx.GraphModule
    cache_layout: list[tuple[int, int, torch.dtype]]
    input_names: tuple[str, ...] = field(default=INPUTS)

    def new_cache(self, batch: int, length: int, device: torch.device | str) -> list[torch.Tensor]:
        """Zeroed caches [batch, kv_heads, length, width], in input order."""
        return [torch.zeros(batch, h, length, w, dtype=dtype, device=device)
                for h, w, dtype in self.cache_layout]

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                 cache_position: torch.Tensor, attn_mask: torch.Tensor,
                 caches: list[torch.Tensor]) -> torch.Tensor:
        """Logits [B, S, V] of the new tokens; writes their keys and values into `caches`."""
        with torch.no_grad():
            return self.gm(input_ids, position_ids, cache_position, attn_mask, *caches)[0]


def build_decode_program(program: Any, *, dequantize_weights: bool = False,
                         check: bool = True,
                         weight_cache: dict[str, torch.Tensor] | None = None) -> DecodeProgram:
    """The KV-cache form of a causal-LM `Program` (module docstring); shares its tensors.

    `check` runs both on a seeded probe (PROBE_LEN tokens: a prefill, then one token at a time)
    and raises DecodeUnsupported unless the logits agree to PROBE_RTOL: an architecture the
    rewrite gets wrong falls back to the uncached loop instead of generating wrong tokens.
    `weight_cache`: dequantized weights shared with the model's other graphs
    (qcompiler/dequantized_linears.py)."""
    from qcompiler.decode_check import check_on_probe
    from qcompiler.devices import retarget_graph

    decoder = _build(program, dequantize_weights, weight_cache)
    device = next(iter(program.gm.buffers()), torch.empty(0)).device
    retarget_graph(decoder.gm, device)  # graph constants (arange devices) follow the weights
    if device.type == "cpu":  # eager: MoE experts on their routed tokens only (CUDA graphs
        from qcompiler.routed_experts import enabled, route_experts  # cannot capture it)

        if enabled():
            route_experts(decoder.gm)
    if check:
        check_on_probe(program, decoder)
    return decoder


def _build(program: Any, dequantize_weights: bool,
           weight_cache: dict[str, torch.Tensor] | None = None) -> DecodeProgram:
    if getattr(program, "kind", None) != "causal-lm":
        raise DecodeUnsupported("only causal language models have a KV-cache decode path")
    graph = fx.Graph()
    val_map: dict[fx.Node, fx.Node] = {}
    graph.output(graph.graph_copy(program.graph, val_map))
    attentions = [n for n in graph.nodes if n.op == "call_function" and n.target == SDPA]
    if not attentions:
        raise DecodeUnsupported("the graph has no scaled_dot_product_attention")
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise DecodeUnsupported("a decode program needs a graph whose only input is input_ids")
    inputs, length = _add_inputs(graph, placeholders[0])
    _feed_positions(graph, inputs["position_ids"])
    layout: list[tuple[int, int, torch.dtype]] = []
    cache_nodes: list[fx.Node] = []
    for i, attn in enumerate(attentions):
        args = list(attn.args) + [None] * max(0, 4 - len(attn.args))
        for j, which in ((1, "k"), (2, "v")):
            base, rep = _kv_base(args[j])
            read, caches = _write_cache(graph, attn, base, f"{which}_cache_{i}", inputs,
                                        length, layout)
            if rep != 1:
                with graph.inserting_before(attn):
                    read = graph.create_node("call_function", aten.repeat_interleave.self_int,
                                             (read, rep, 1), name=f"{which}_cache_{i}_heads")
                _infer(read)
            args[j] = read
            cache_nodes += caches
        args[3] = inputs["attn_mask"]
        attn.args = tuple(args)
        attn.kwargs = {k: v for k, v in attn.kwargs.items() if k != "is_causal"}
    out = next(n for n in graph.nodes if n.op == "output")
    logits = out.args[0]
    if not isinstance(logits, fx.Node):
        raise DecodeUnsupported("a decode program needs a graph returning one logits tensor")
    out.args = ((logits, *cache_nodes),)
    _drop_asserts(graph)
    graph.eliminate_dead_code()
    gm = fx.GraphModule(program.gm, graph)
    if dequantize_weights:
        dequantize_linears(gm, weight_cache)
    gm.graph.lint()
    gm.recompile()
    names = tuple(n.name for n in gm.graph.nodes if n.op == "placeholder")
    return DecodeProgram(gm, layout, names)


def _write_cache(graph: fx.Graph, attn: fx.Node, base: fx.Node, name: str,
                 inputs: dict[str, fx.Node], length: Any,
                 layout: list) -> tuple[fx.Node, list[fx.Node]]:
    """Cache inputs for one key or value, and the node reading the whole cache after this
    step's write: a float cache (`aten.index_copy_`), or the packed parts of the KV format
    when `base` is a `qc.quantize_kv` (qcompiler/kv_cache.py)."""
    from qcompiler.act_ops import quantize_kv
    from qcompiler.kv_cache import part_layout, quantized_kv_update

    position = inputs["cache_position"]
    if base.target == quantize_kv:
        x, fmt, group = base.args[0], base.kwargs["format"], base.kwargs["group_size"]
        (heads, dim), dtype = _kv_shape(x)
        parts = part_layout(fmt, group, dim)
        caches = []
        for part, width, part_dtype in parts:
            caches.append(_placeholder(graph, f"{name}_{part}"))
            _cache_val(caches[-1], x, length, width, part_dtype)
            layout.append((heads, width, part_dtype))
        with graph.inserting_before(attn):
            read = graph.create_node("call_function", quantized_kv_update,
                                     (caches, position, x, fmt, group, [p[0] for p in parts]),
                                     name=f"{name}_read")
        _cache_val(read, x, length)
        return read, caches
    (heads, dim), dtype = _kv_shape(base)
    cache = _placeholder(graph, name)
    _cache_val(cache, base, length)
    layout.append((heads, dim, dtype))
    with graph.inserting_before(attn):
        read = graph.create_node("call_function", aten.index_copy_.default,
                                 (cache, 2, position, base), name=f"{name}_written")
    _infer(read)
    return read, [read]


def _placeholder(graph: fx.Graph, name: str) -> fx.Node:
    last = [n for n in graph.nodes if n.op == "placeholder"][-1]
    with graph.inserting_after(last):
        return graph.placeholder(name)


def _add_inputs(graph: fx.Graph, input_ids: fx.Node) -> tuple[dict[str, fx.Node], Any]:
    """position_ids, cache_position and attn_mask after input_ids; with the symbolic cache
    length used to annotate types (None when the graph has no fake values)."""
    out = {name: _placeholder(graph, name) for name in INPUTS[1:]}
    return out, _annotate(input_ids, out)


def _annotate(input_ids: fx.Node, inputs: dict[str, fx.Node]) -> Any:
    """Fake values for the new inputs (batch and sequence from input_ids, a fresh size for the
    cache length L), so the IR dump shows their types; best effort, types only."""
    from torch._guards import detect_fake_mode

    ids_val = input_ids.meta.get("val")
    mode = detect_fake_mode([ids_val]) if isinstance(ids_val, torch.Tensor) else None
    if mode is None or mode.shape_env is None:
        return None
    batch, seq = ids_val.shape
    length = mode.shape_env.create_unbacked_symint()
    inputs["position_ids"].meta["val"] = ids_val
    with mode:
        inputs["cache_position"].meta["val"] = torch.empty(seq, dtype=torch.int64)
        inputs["attn_mask"].meta["val"] = torch.empty(batch, 1, seq, length, dtype=torch.bool)
    return length


def _feed_positions(graph: fx.Graph, position_ids: fx.Node) -> None:
    """Point RoPE at `position_ids`: the [1, S] int64 positions (arange(S) + past) that the
    rotary embedding's inv_freq is multiplied with are replaced by the input."""
    inv = [n for n in graph.nodes if n.op == "get_attr" and str(n.target).endswith("inv_freq")
           and n.users]
    if not inv:
        raise DecodeUnsupported("no rotary position embedding (inv_freq) found; only RoPE "
                                "models (Llama, Qwen2, Mistral) have a KV-cache decode path")
    positions = set()
    for freq in inv:
        for use in _descendants(freq, depth=4):
            for arg in use.args:
                p = _int_positions(arg) if isinstance(arg, fx.Node) else None
                if p is not None:
                    positions.add(p)
    if not positions:
        raise DecodeUnsupported("cannot find the positions the rotary embedding reads")
    for p in positions:
        p.replace_all_uses_with(position_ids)


def _descendants(node: fx.Node, depth: int) -> list[fx.Node]:
    out, frontier = [], [node]
    for _ in range(depth):
        frontier = [u for n in frontier for u in n.users]
        out += frontier
    return out


def _int_positions(node: fx.Node) -> fx.Node | None:
    """Walk up single-input ops (casts, unsqueezes) to a 2-D int64 tensor: the positions."""
    for _ in range(8):
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dtype == torch.int64 and val.dim() == 2:
            return node
        if node.op != "call_function" or not node.args or not isinstance(node.args[0], fx.Node):
            return None
        node = node.args[0]
    return None


def _cache_val(node: fx.Node, like: fx.Node, length: Any, width: int | None = None,
               dtype: torch.dtype | None = None) -> None:
    """node.meta["val"]: `like`'s [B, H, ., D] with L slots (and width, dtype if given)."""
    from torch._guards import detect_fake_mode

    val = like.meta.get("val")
    mode = detect_fake_mode([val]) if isinstance(val, torch.Tensor) else None
    if mode is not None and length is not None and val.dim() == 4:
        with mode:
            node.meta["val"] = torch.empty(val.shape[0], val.shape[1], length,
                                           width or val.shape[3], dtype=dtype or val.dtype)


def _infer(*nodes: fx.Node) -> None:
    from qcompiler.ir import infer_node_meta

    for node in nodes:
        try:
            infer_node_meta(node)
        except Exception:  # types are for the IR dump only; a failure just prints `none`
            node.meta.pop("val", None)


def _kv_base(node: Any) -> tuple[fx.Node, int]:
    """The cached tensor behind an attention operand, and GQA's repetition factor:
    reshape(expand(unsqueeze(kv, 2), [B, Hkv, rep, S, D]), [B, H, S, D]) -> (kv, rep)."""
    if not isinstance(node, fx.Node):
        raise DecodeUnsupported("attention key/value is not a graph value")
    if node.target in RESHAPES and isinstance(node.args[0], fx.Node):
        expand = node.args[0]
        if expand.target == aten.expand.default and isinstance(expand.args[0], fx.Node):
            unsq = expand.args[0]
            if unsq.target == aten.unsqueeze.default and unsq.args[1] == 2:
                rep = expand.args[1][2]
                if isinstance(rep, int):
                    return unsq.args[0], rep
    return node, 1


def _kv_shape(node: fx.Node) -> tuple[tuple[int, int], torch.dtype]:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() != 4:
        raise DecodeUnsupported(f"attention operand %{node.name} has no known [B, H, S, D] shape")
    try:
        return (int(val.shape[1]), int(val.shape[3])), val.dtype
    except (TypeError, ValueError):
        raise DecodeUnsupported(f"attention operand %{node.name} has dynamic heads") from None


def _drop_asserts(graph: fx.Graph) -> None:
    """Metadata asserts keep the dead mask computation alive; they check nothing we need."""
    for n in list(graph.nodes):
        if n.op == "call_function" and n.target == aten._assert_tensor_metadata.default:
            if not n.users:
                graph.erase_node(n)

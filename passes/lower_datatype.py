"""`lower-datatype`: replace constant-weight linears by quantized `qc.linear_<format>` ops.

    lower-datatype{format=razer4,group-size=128}
    lower-datatype{format=razer4,skip=lm_head,*embed*,override=layers.*.mlp.down_proj:format=int8}

For every selected `aten.linear(x, W, b)` the weight is quantized with the format's reference
`quantize` (its default scale search), the packed parts become buffers named
`<layer>.codes`, `<layer>.scales`, ... and the linear becomes
`qc.linear_<format>(x, codes, scales, zeros, meta, global_scale, b) {group_size, n, k, layer}`;
the fp weight is deleted when nothing else uses it.

Selection: `skip` patterns keep layers in floating point (default: the LM head, embeddings and
MoE routers `mlp.gate`, as llama.cpp, AWQ and GPTQ do). `override` gives layers their own
format or group size: `PATTERN:format=F[:group-size=G]`, `PATTERN:F` or `PATTERN:skip`, several
separated by `;`, the last matching entry winning. A pattern matches a layer name (the
weight's name without `.weight`) in full or as a dotted suffix, with shell wildcards
(`layers.*.mlp.down_proj`).

A K that the group size does not divide is an error by default (`on-indivisible=error`, the
message lists group sizes that fit and names `on-indivisible=pad`); `skip` keeps such layers in
fp (listed in the report) and `pad` zero-pads K to a multiple of the group size, with an
explicit `aten.constant_pad_nd` on x (exact: the padded columns multiply zeros). Padding is not
the default because it changes the layer's shape and costs memory and compute the user did not
ask for; the error says how to get it.

`scale=pow2|pow2-row` (formats with a scale option: fp4, razer4) constrains the group scales as
ZeroQuant-FP does (passes/_weight_common.py); the calibrated passes take the same option, and a
plan made with other scales is quantized again, with a warning.

Weights that are not floating point (int8, bool) are not quantized (they are not fp weights;
converting them would change the function) and are reported. Every layer left in fp is in the
report; the ones not chosen by a skip pattern or override (integer weights, skipped indivisible
layers, matmul weights that are not a linear's, such as MoE experts behind `bmm`) are also
named in one warning line on stderr (passes/_fp_layers.py).

Weight plans (qcompiler/weight_plan.py): when a calibration pass (clip, gptq, pot-refine, lorc)
already chose a layer's quantized values and the layer's weight is still the one it recorded,
its QTensor is used as is (bit-exact, no second search) if its format and group size are the
ones this pass would use; otherwise a warning says so and the layer's original fp weight is
quantized normally.
Plans are dropped once used. The default skip also keeps LoRC's low-rank linears
(`<layer>.lorc_a/.lorc_b`) in fp.

Per-layer results (format, group size, N, K, relative weight error Σ(ŵ−w)²/Σw²) go to
`ctx.report["layers"]`, which the artifact writes as report.json.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.fx as fx

from qcompiler.errors import PassError, QCompilerError
from qcompiler.ir.meta import infer_node_meta
from qcompiler.pass_registry import register_pass
from qcompiler.passes._fp_layers import unlowered_weights, warn_fp_layers
from qcompiler.passes._scale_modes import ScaleMode, plan_scale, scale_options
from qcompiler.passes_base import Pass, PassContext, PassResult
from qcompiler.program import Program
from qcompiler.weight_plan import describe, drop_plan, plans, valid_plan

KEEP_META = ("stack_trace", "nn_module_stack", "source_fn_stack", "torch_fn")
CHUNK_ELEMENTS = 1 << 20  # weights bigger than this are quantized a block of rows at a time
SKIP = "skip"


@dataclass(frozen=True)
class LayerPlan:
    """What to do with one layer: quantize to (format, group size), or keep it in fp."""

    format: str | None  # None: keep in floating point
    group_size: int | None
    reason: str = ""


def matches(layer: str, pattern: str) -> bool:
    """A pattern matches the whole layer name or a dotted suffix of it."""
    return fnmatch.fnmatchcase(layer, pattern) or fnmatch.fnmatchcase(layer, "*." + pattern)


def parse_overrides(text: str) -> list[tuple[str, dict[str, str]]]:
    """`a:format=int4:group-size=64;b:int8;c:skip` -> [(pattern, {key: value}), ...]."""
    out = []
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        pattern, _, rest = entry.partition(":")
        if not pattern or not rest:
            raise ValueError(f"override '{entry}' must be PATTERN:format=F[:group-size=G]")
        settings: dict[str, str] = {}
        for item in rest.split(":"):
            key, eq, value = item.partition("=")
            if not eq:  # shorthand: `PATTERN:int4` or `PATTERN:skip`
                key, value = ("skip", "true") if item == SKIP else ("format", item)
            if key not in ("format", "group-size", "skip"):
                raise ValueError(f"override '{entry}': unknown key '{key}' "
                                 "(keys: format, group-size, skip)")
            if key == "group-size" and not value.isdigit():
                raise ValueError(f"override '{entry}': group-size must be an integer")
            settings[key] = value
        out.append((pattern, settings))
    return out


@register_pass
@dataclass(frozen=True)
class LowerDatatype(Pass):
    """Replace constant-weight linears by quantized qc.linear_<format> ops."""

    name = "lower-datatype"
    format: str = "razer4"
    group_size: int | None = None  # None: the format's default
    skip: tuple[str, ...] = ("lm_head", "*embed*", "*.lorc_*", "mlp.gate")
    override: str = ""
    on_indivisible: Literal["error", "skip", "pad"] = "error"
    search: Literal["clip", "rtn"] | None = None  # None: the format's default search
    # ZeroQuant-FP's scale constraints (passes/_weight_common.py), for the layers whose format
    # has a scale option; the pass's own format must have it
    scale: ScaleMode | None = None

    def __post_init__(self) -> None:
        parse_overrides(self.override)  # ValueError -> usage error naming the pass

    # ---- planning --------------------------------------------------------------------------
    def plan(self, layer: str) -> LayerPlan:
        if any(matches(layer, p) for p in self.skip):
            return LayerPlan(None, None, "skip pattern")
        fmt, group = self.format, self.group_size
        for pattern, settings in parse_overrides(self.override):
            if matches(layer, pattern):
                if settings.get("skip", "false") == "true":
                    return LayerPlan(None, None, "override")
                fmt = settings.get("format", fmt)
                if "group-size" in settings:
                    group = int(settings["group-size"])
        return LayerPlan(fmt, group)

    def _format(self, name: str) -> Any:
        from qcompiler import formats

        try:
            fmt = formats.get(name)
        except QCompilerError as e:
            raise PassError(self.name, str(e).removeprefix("error: ")) from None
        if fmt.role not in ("weight", "both"):
            raise PassError(self.name, f"'{name}' is an activation format; choose a weight "
                            f"format (see 'qcompile formats')")
        return fmt

    # ---- rewriting -------------------------------------------------------------------------
    def apply(self, program: Program, ctx: PassContext) -> PassResult:
        nodes = list(program.linears())
        layers = ctx.report.setdefault("layers", [])
        quantized = skipped = 0
        object.__setattr__(self, "_warned", False)
        kept: list[dict[str, Any]] = []
        for node in ctx.progress(nodes, total=len(nodes), desc=self.name):
            entry = self._lower(program, node, ctx)
            layers.append(entry)
            if entry["status"] == "quantized":
                quantized += 1
            else:
                skipped += 1
                kept.append(entry)
        if quantized:
            program.gm.recompile()
        unlowered = unlowered_weights(program)
        layers.extend(unlowered)
        skipped += len(unlowered)
        warn_fp_layers(self.name, kept + unlowered, ctx)
        return PassResult(quantized > 0,
                          {"layers-quantized": quantized, "layers-skipped": skipped})

    def _lower(self, program: Program, node: fx.Node, ctx: PassContext) -> dict[str, Any]:
        weight_node = node.args[1]
        target = str(weight_node.target)
        layer = target.removesuffix(".weight")
        weight = program.get_tensor(target)  # may be a stand-in: only shape and dtype here
        n, k = (int(d) for d in weight.shape)
        entry: dict[str, Any] = {"name": layer, "n": n, "k": k}
        plan = self.plan(layer)
        if plan.format is None:
            return {**entry, "status": "skipped", "reason": plan.reason}
        if not weight.is_floating_point():
            dtype = str(weight.dtype).removeprefix("torch.")
            return {**entry, "status": "skipped", "dtype": dtype,
                    "reason": f"{dtype} weight, not floating point"}
        fmt = self._format(plan.format)
        group = plan.group_size or fmt.default_group_size or k
        per_row = group == k and (fmt.per_row or fmt.default_group_size is None)
        if group not in fmt.group_sizes and not per_row:
            allowed = ", ".join(str(g) for g in fmt.group_sizes)
            raise PassError(self.name, f"format {fmt.name} does not support group size {group} "
                            f"(allowed: {allowed}); choose one with --group-size")
        pad = 0
        if k % group:
            if self.on_indivisible == "skip":
                return {**entry, "status": "skipped",
                        "reason": f"group size {group} does not divide K={k}"}
            if self.on_indivisible == "error":
                raise PassError(self.name, _indivisible_message(fmt, group, k, layer))
            pad = math.ceil(k / group) * group - k
        opts = self._scale_options(fmt)
        planned = self._planned(program, ctx, layer, target, fmt.name, group, pad,
                                opts.get("scale", "fp16"))
        if planned is not None:
            q = planned["qtensor"]
            rel_error = _rel_error(planned["original"], fmt.dequantize(q))
            self._rewrite(program, node, layer, q, pad)
            drop_plan(program, layer)
            if not weight_node.users:
                program.graph.erase_node(weight_node)
                program.delete_tensor(target)
            return {**entry, "status": "quantized", "format": fmt.name, "group_size": group,
                    "dtype": str(weight.dtype).removeprefix("torch."),
                    "bits_per_weight": fmt.bits_per_weight(group), "rel_error": rel_error,
                    "planned_by": planned["by"]}
        w = _weight(program, target).detach()  # in its own dtype: rows go to fp32 in blocks
        if not bool(torch.isfinite(w).all()):
            bad = int((~torch.isfinite(w)).sum())
            raise PassError(self.name, f"the weight of {layer} has {bad} NaN/Inf value(s); "
                            "fix the checkpoint (quantization needs finite weights)")
        if pad:
            w = torch.nn.functional.pad(w.to(torch.float32), (0, pad))
        try:
            q, rel_error = quantize_rows(fmt, w, group, self.search, opts)
        except QCompilerError as e:
            raise PassError(self.name, f"{layer}: {e}") from None
        del w
        self._rewrite(program, node, layer, q, pad)
        if not weight_node.users:
            program.graph.erase_node(weight_node)
            program.delete_tensor(target)
        entry.update(status="quantized", format=fmt.name, group_size=group,
                     dtype=str(weight.dtype).removeprefix("torch."),
                     bits_per_weight=fmt.bits_per_weight(group), rel_error=rel_error)
        if pad:
            entry["padded_k"] = k + pad
        return entry

    def _scale_options(self, fmt: Any) -> dict[str, str]:
        """`scale` as format options: for this layer's format if it has the option; the pass's
        own format must (checked here, so the error names the pass)."""
        if self.scale is None or "scale" in dict(fmt.options):
            return scale_options(self.name, fmt, self.scale)
        scale_options(self.name, self._format(self.format), self.scale)  # raises if it has none
        return {}  # an override's format without the option keeps its own scales

    def _planned(self, program: Program, ctx: PassContext, layer: str, target: str,
                 fmt: str, group: int, pad: int, scale: str) -> dict[str, Any] | None:
        """The layer's weight plan when it can be used as is (module docstring)."""
        record = plans(program).get(layer)
        if record is None:
            return None
        if valid_plan(program, layer, target) is None:
            ctx.log(f"{layer}: the weight changed after {record['by']} planned it; "
                    "quantizing it again")
            drop_plan(program, layer)
            return None
        if record["format"] != fmt or record["group_size"] != group or pad or \
                plan_scale(record) != scale:
            if not getattr(self, "_warned", False):  # once per run, not per layer
                ours = f"{fmt} g{group}" + ("" if scale == "fp16" else f" scale={scale}")
                ctx.warn(f"{self.name}: {layer} was planned as {describe(record)} but is "
                         f"lowered to {ours}; quantizing "
                         f"such layers again (give {record['by']} the same format, group "
                         "size and scale)")
            object.__setattr__(self, "_warned", True)
            program.set_tensor(target, record["original"])  # requantize the fp weight, not
            drop_plan(program, layer)                       # the planned (quantized) one
            return None
        return record

    def _rewrite(self, program: Program, node: fx.Node, layer: str, q: Any, pad: int) -> None:
        from qcompiler.ops import PARTS, encode_opts, linear_op, op_name

        graph = program.graph
        x = node.args[0]
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        parts = q.tensors()
        with graph.inserting_before(node):
            operands: list[Any] = []
            for part in PARTS:
                if part not in parts:
                    operands.append(None)
                    continue
                attr = graph.get_attr(program.add_tensor(f"{layer}.{part}", parts[part]))
                infer_node_meta(attr)
                operands.append(attr)
            if pad:
                x = graph.call_function(torch.ops.aten.constant_pad_nd.default, (x, [0, pad], 0.0))
                infer_node_meta(x)
            kwargs: dict[str, Any] = {"group_size": q.group_size, "n": q.shape[0],
                                      "k": q.shape[1], "layer": layer}
            if q.opts:
                kwargs["opts"] = encode_opts(q.opts)
            new = graph.create_node("call_function", linear_op(q.format), (x, *operands, bias),
                                    kwargs, name=op_name(q.format))  # not %linear_razer4_default
        for key in KEEP_META:
            if key in node.meta:
                new.meta[key] = node.meta[key]
        infer_node_meta(new)
        node.replace_all_uses_with(new)
        graph.erase_node(node)


def quantize_rows(fmt: Any, w: torch.Tensor, group: int, search: str | None,
                  opts: dict[str, Any] | None = None) -> tuple[Any, float]:
    """`fmt.quantize` and the relative error Σ(ŵ−w)²/Σw², a block of rows at a time for big
    weights: groups run along K, so rows are independent and the result is identical, while
    the scale search's temporaries stay bounded (streaming compiles of 1B models depend on it).
    Formats with a per-tensor scale (NVFP4) see the whole tensor at once."""
    from qcompiler.formats.base import QTensor

    n, k = w.shape
    rows = max(1, CHUNK_ELEMENTS // k)
    blocks = [(i, min(n, i + rows)) for i in range(0, n, rows)]
    if len(blocks) > 1:
        probe = fmt.quantize(w[:1].to(torch.float32), group_size=group, search=search,
                             **(opts or {}))
        if probe.global_scale is not None:
            blocks = [(0, n)]
    parts, err, norm = [], 0.0, 0.0
    for start, stop in blocks:
        block = w[start:stop].to(torch.float32)
        q = fmt.quantize(block, group_size=group, search=search, **(opts or {}))
        err += float(((fmt.dequantize(q) - block) ** 2).sum())
        norm += float((block * block).sum())
        parts.append(q)
    rel_error = float(f"{err / norm:.6g}") if norm > 0 else 0.0
    if len(parts) == 1:
        return parts[0], rel_error
    first = parts[0]
    if any(p.opts != first.opts for p in parts):  # a data-dependent option: quantize whole
        q = fmt.quantize(w.to(torch.float32), group_size=group, search=search,
                         **(opts or {}))
        return q, rel_error
    tensors = {key: torch.cat([p.tensors()[key] for p in parts]) for key in first.tensors()}
    return QTensor.from_tensors(fmt.name, (n, k), first.group_size, tensors, first.opts), rel_error


def _rel_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    w = w.detach().to(torch.float32)
    norm = float((w * w).sum())
    err = float(((w_hat - w) ** 2).sum())
    return float(f"{err / norm:.6g}") if norm > 0 else 0.0


def _weight(program: Program, target: str) -> torch.Tensor:
    """The weight's values; streamed from the checkpoint when the program holds a stand-in."""
    lazy = program.meta.get("lazy_tensors")
    if lazy and target in lazy:
        from qcompiler.lazy_tensors import load_lazy_tensor

        return load_lazy_tensor(program, target, keep=False)
    return program.get_tensor(target)


def _indivisible_message(fmt: Any, group: int, k: int, layer: str) -> str:
    fits = [g for g in fmt.group_sizes if k % g == 0]
    if fits:
        sizes = " or ".join(str(g) for g in fits[-2:]) if len(fits) > 1 else str(fits[0])
        fix = f"use --group-size {sizes}, or"
    else:
        fix = "no supported group size divides it: use"
    return (f"group size {group} does not divide K={k} in {layer}; {fix} "
            "--on-indivisible pad (lower-datatype{on-indivisible=pad}) to zero-pad K (exact) or "
            "--on-indivisible skip to keep such layers in fp")

"""Run a calibrated pipeline one decoder layer at a time over a streamed checkpoint.

    program = capture_streaming(directory)            # stand-ins, weights stay in the shards
    run_layerwise(program, passes, ctx, sequential=True)

The pipeline is cut in three: the passes before the first calibrated one (canonicalize, dce,
fold-norms, rotate: they run on the whole graph, their weight transforms recorded, not computed:
lazy_weight.py), the calibrated passes (gptq, clip, pot-refine, run per decoder layer) and the
rest (lower-datatype, dce, ...: the existing streaming path, which packs the plans). In between,
for each layer (segments.py): its weights are read from the shards with the recorded transforms
applied, the calibration activations entering it run through it while the calibrated passes
collect their statistics and plan its linears (on a one-layer Program, through the passes' own
code), the plans are kept (codes and scales only) and the layer's fp weights are dropped. The
activations leaving the layer become the next layer's input: computed with the fp weights
(`sequential=False`: statistics of the fp model) or with the layer's quantized weights
(`sequential=True`, GPTQ's and llm-compressor's sequential mode).

Memory: one layer's fp32 weights (plus the passes' temporaries for it), the activations entering
and leaving it (2 × samples × length × hidden × 4 bytes), the values every layer reads (mask,
rotary tables) and the packed codes so far; flat in depth. docs/LAYERWISE.md has the rules.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import torch

from qcompiler.calibration import CalibrationConfig, calibration_batches, get_config
from qcompiler.lazy_tensors import load_lazy_tensor, read_source, trim_heap
from qcompiler.errors import QCompilerError
from qcompiler.layerwise.lazy_weight import detach_transforms, wrap_lazy_tensors
from qcompiler.layerwise.segments import Segment, last_uses, segment_program, split_segments
from qcompiler.passes_base import PassContext
from qcompiler.program import Program
from qcompiler.weight_plan import IN_PLACE, KEY, WeightPlans, plans, relative_error

LAYERWISE_PASSES = ("gptq", "clip", "pot-refine")
WHOLE_MODEL_PASSES = ("awq", "smooth", "lorc", "aqas")  # change neighbours or the graph
GRAPH_ONLY = ("canonicalize", "dce")


def wants_layerwise(passes: list[Any]) -> bool:
    """Whether the pipeline has a calibrated pass (the layer-wise path's reason to exist)."""
    return any(p.name in LAYERWISE_PASSES + WHOLE_MODEL_PASSES for p in passes)


def split_pipeline(passes: list[Any]) -> tuple[list[Any], list[Any], list[Any]]:
    """(before, calibrated, after); a one-line error for what cannot run layer by layer."""
    for p in passes:
        if p.name in WHOLE_MODEL_PASSES:
            raise QCompilerError(f"{p.name} cannot run layer by layer yet (it changes weights "
                                 "outside the layer it calibrates); compile without streaming "
                                 "(--no-stream) or leave it out")
    first = next(i for i, p in enumerate(passes) if p.name in LAYERWISE_PASSES)
    last = first
    while last < len(passes) and passes[last].name in LAYERWISE_PASSES:
        last += 1
    later = [p.name for p in passes[last:] if p.name in LAYERWISE_PASSES]
    if later:
        raise QCompilerError(f"a layer-wise compile runs the calibrated passes together: move "
                             f"{later[0]} next to {passes[first].name} in the pipeline")
    return passes[:first], passes[first:last], passes[last:]


def run_layerwise(program: Program, passes: list[Any], ctx: PassContext, *,
                  sequential: bool = True, **pm_options: Any) -> Program:
    """Run `passes` over the streamed `program`, calibrated passes layer by layer (module doc)."""
    from qcompiler.pass_manager import PassManager

    if not program.meta.get("lazy_tensors"):
        raise QCompilerError("a layer-wise compile reads the weights from a Hugging Face "
                             "checkpoint directory; give one (or compile without --layerwise)")
    before, calibrated, after = split_pipeline(passes)
    for name in list(program.meta["lazy_tensors"]):
        if program.has_tensor(name) and program.get_tensor(name).dim() <= 1:  # norms, biases
            load_lazy_tensor(program, name, keep=True)
    lead = 0
    while lead < len(before) and before[lead].name in GRAPH_ONLY:
        lead += 1
    if lead:
        PassManager(before[:lead], **pm_options).run(program, ctx)
    if before[lead:]:
        wrap_lazy_tensors(program)
        try:
            PassManager(before[lead:], **pm_options).run(program, ctx)
        finally:
            detach_transforms(program)
    batches = layerwise_batches(program, ctx)
    errors = plan_by_layer(program, calibrated, batches, ctx, sequential)
    if after:
        PassManager(after, **pm_options).run(program, ctx)
    for entry in ctx.report.get("layers", []):  # the error against the fp weight, which the
        if entry.get("planned_by") and entry.get("name") in errors:  # plan no longer holds
            entry["rel_error"] = errors[entry["name"]]
    return program


def layerwise_batches(program: Program, ctx: PassContext) -> list[Any]:
    """The calibration inputs: explicit batches or text as usual; without either, seeded random
    ordinary tokens (sampling from the model needs every layer for every token)."""
    cfg = get_config(ctx)
    if cfg.sampled:
        raise QCompilerError("--calib-sampled samples from the whole model, which a layer-wise "
                             "compile never holds; leave it out or compile with --no-stream")
    if cfg.batches is not None or cfg.text is not None:
        return calibration_batches(program, ctx)
    from qcompiler.calibration import program_tokenizer
    from qcompiler.evaluate import random_sequences

    vocab = int((program.meta.get("config") or {}).get("vocab_size") or 0)
    if not vocab:
        raise QCompilerError("a layer-wise compile without --calib needs the model's vocab_size "
                             "in config.json; give calibration text with --calib FILE")
    # a warning, not a note: the accuracy of every calibrated pass rests on this data, and a
    # user who left out --calib on a small model got the model's own samples instead
    ctx.warn(f"calibrating on {cfg.samples} random-token sequences: a layer-wise compile cannot "
             "sample from the model; give --calib FILE (text like the model's inputs) for "
             "better accuracy")
    tokenizer = program_tokenizer(program)
    out: list[Any] = []
    for i, length in enumerate(cfg.lengths()):
        out += random_sequences(vocab, 1, length, cfg.seed + i, tokenizer)
    cfg.batches = out
    return list(out)


def plan_by_layer(program: Program, calibrated: list[Any], batches: list[Any],
                  ctx: PassContext, sequential: bool) -> dict[str, float]:
    """The per-layer loop; returns each planned layer's relative weight error."""
    segments = split_segments(program)
    last = last_uses(segments)
    env: dict[Any, list[Any]] = {}
    prefix, layers, suffix = segments[0], segments[1:-1], segments[-1]
    batches, shard = _own_share(batches)  # several processes: this rank's sequences only
    for node, values in zip(prefix.inputs, zip(*[b if isinstance(b, (tuple, list)) else (b,)
                                                  for b in batches])):
        env[node] = list(values)
    _run_segment(program, prefix, env, last)
    seconds = {str(p): 0.0 for p in calibrated}
    stats: dict[str, dict[str, Any]] = {str(p): {} for p in calibrated}
    errors: dict[str, float] = {}
    seed = get_config(ctx).seed
    todo = layers + ([suffix] if _plans_anything(program, suffix, calibrated) else [])
    for seg in ctx.progress(todo, total=len(todo), desc="layer-wise"):
        loaded = _load(program, seg)
        sub = segment_program(program, seg)
        inputs = [tuple(env[n][j] for n in seg.inputs) for j in range(len(batches))]
        outs = None if sequential or seg is suffix else _forward(sub, inputs)
        sub_ctx = PassContext(quiet=True, calibration=CalibrationConfig(
            samples=max(1, len(inputs)), batches=inputs, seed=seed, shard=shard))
        for p in calibrated:
            t0 = time.perf_counter()
            if p is calibrated[-1]:  # its plans are final: fake values in the fp weights' place
                sub.meta[IN_PLACE] = True
            result = p.apply(sub, sub_ctx)
            seconds[str(p)] += time.perf_counter() - t0
            for key, value in result.stats.items():
                stats[str(p)][key] = stats[str(p)].get(key, 0) + value
        if seg is not suffix:
            outs = outs if outs is not None else _forward(sub, inputs)
            for k, node in enumerate(seg.outputs):
                env[node] = [o[k] for o in outs]
        errors.update(_keep_plans(program, sub))
        for name in loaded:  # the fp weights go; planned ones now stand for their plans
            if name not in _planned_weights(program):
                program.set_tensor(name, _standin(program.get_tensor(name)))
        _drop_dead(env, last, seg.index)
        del sub, inputs, outs
        gc.collect()  # the one-layer GraphModule is in reference cycles: without this its fp
        trim_heap()  # weights (fake values) stayed alive into the next layer's peak
    for p in calibrated:
        ctx.report.setdefault("passes", []).append(
            {"pass": str(p), "seconds": round(seconds[str(p)], 6), "modified": True,
             "stats": stats[str(p)]})  # as the whole-model run reports it
    return errors


def _own_share(batches: list[Any]) -> tuple[list[Any], list[int] | None]:
    """(the batches this process runs, their global indices or None when it runs all): over
    several processes each rank carries only its share of the activations through the layers;
    the passes' statistics are combined across ranks (qcompiler/calibration.py)."""
    from qcompiler.distributed import current, share

    group = current()
    if group is None:
        return batches, None
    if len(batches) < group.world:
        raise QCompilerError(f"{group.world} processes need at least {group.world} calibration "
                             f"sequences, got {len(batches)}; raise --calib-samples")
    ids = share(len(batches), group)
    return [batches[i] for i in ids], ids


def _run_segment(program: Program, seg: Segment, env: dict[Any, list[Any]],
                 last: dict[Any, int]) -> None:
    """Run a piece with nothing to plan (the prefix), keeping only what later pieces read."""
    loaded = _load_embedding_rows(program, seg, env)
    loaded += _load(program, seg)
    sub = segment_program(program, seg)
    count = len(next(iter(env.values())))
    outs = _forward(sub, [tuple(env[n][j] for n in seg.inputs) for j in range(count)])
    for k, node in enumerate(seg.outputs):
        env[node] = [o[k] for o in outs]
    for name in loaded:
        program.set_tensor(name, _standin(program.get_tensor(name)))
    _drop_dead(env, last, seg.index)


def _forward(sub: Program, inputs: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    with torch.no_grad():
        return [tuple(sub.gm(*x)) for x in inputs]


def _load(program: Program, seg: Segment) -> list[str]:
    """Read the piece's streamed weights (transforms applied) into the program."""
    lazy = program.meta.get("lazy_tensors") or {}
    names = [n for n in seg.weights() if n in lazy and program.has_tensor(n)
             and 0 in program.get_tensor(n).stride()]  # not read already
    for name in names:
        program.set_tensor(name, load_lazy_tensor(program, name, keep=False))
    return names


def _load_embedding_rows(program: Program, seg: Segment, env: dict[Any, list[Any]]
                         ) -> list[str]:
    """Embedding tables the piece looks up with its input ids: only the rows the calibration
    uses are read and transformed, into an uninitialised table (the other rows are never
    touched, so never resident): the prefix of a 128K-vocab model costs a few MB, not the
    table in float64."""
    lazy = program.meta.get("lazy_tensors") or {}
    done: list[str] = []
    for node in seg.nodes:
        if node.target is not torch.ops.aten.embedding.default:
            continue
        weight, ids_node = node.args[0], node.args[1]
        name = str(weight.target)
        entry = lazy.get(name)
        if (entry is None or ids_node not in env or name in done
                or not getattr(entry, "by_rows", True)
                or any(u.target is not torch.ops.aten.embedding.default for u in weight.users)):
            continue
        ids = torch.cat([v.reshape(-1) for v in env[ids_node]]).unique()
        standin = program.get_tensor(name)
        finish = getattr(entry, "finish", None)
        table = torch.empty(tuple(standin.shape), dtype=standin.dtype)
        shard, key = entry
        rows = max(1, (16 << 20) // max(1, standin[0].numel() * 4))
        for start in range(0, int(standin.shape[0]), rows):
            pick = ids[(ids >= start) & (ids < start + rows)]
            if len(pick):
                block = read_source(shard, key, start, start + rows)[pick - start]
                table[pick] = finish(block) if finish else block.to(standin.dtype)
        program.set_tensor(name, table)
        done.append(name)
    return done


def _plans_anything(program: Program, seg: Segment, calibrated: list[Any]) -> bool:
    """Whether a calibrated pass would plan a linear of the suffix (the LM head is skipped by
    default: then its fp32 weight is never read here)."""
    from qcompiler.passes.lower_datatype import matches

    names = [w.removesuffix(".weight") for w in seg.weights()]
    return any(not any(matches(n, pat) for pat in getattr(p, "skip", ()))
               for p in calibrated for n in names if n in _linear_layers(program))


def _linear_layers(program: Program) -> set[str]:
    return {str(n.args[1].target).removesuffix(".weight") for n in program.linears()}


def _keep_plans(program: Program, sub: Program) -> dict[str, float]:
    """Move the piece's plans into the whole program, the weight replaced by a stand-in (the
    plan's identity check in lower-datatype holds, no fp copy is kept)."""
    from qcompiler import formats

    weights = {str(n.args[1].target).removesuffix(".weight"): str(n.args[1].target)
               for n in sub.linears()}
    new: dict[str, Any] = {}
    errors: dict[str, float] = {}
    for layer, record in plans(sub).items():
        qt = record["qtensor"]
        errors[layer] = record["rel_error"] if "rel_error" in record else relative_error(
            record["original"], formats.get(qt.format).dequantize(qt))
        name = weights[layer]
        program.set_tensor(name, _standin(record["original"]))
        stored = program.get_tensor(name)
        new[layer] = {**record, "weight": stored, "original": stored}
    if new:
        program.meta[KEY] = WeightPlans({**plans(program), **new})
    return errors


def _planned_weights(program: Program) -> set[str]:
    return {f"{layer}.weight" for layer in plans(program)}


def _standin(t: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=t.dtype).expand(tuple(t.shape))


def _drop_dead(env: dict[Any, list[Any]], last: dict[Any, int], index: int) -> None:
    for node in [n for n in env if last.get(n, -2) <= index]:
        del env[node]

"""The compile driver: capture → pass pipeline → artifact, as one function.

`compile(model, format="razer4", out="OUT")` is what `qcompile MODEL --format razer4 -o OUT` and
`qcompiler.compile` run. It checks what can be checked before the slow part (OUT exists, OUT's
parent writable, the pipeline parses), captures the model, runs the pipeline under the pass
manager and writes the artifact atomically.

Streaming (big checkpoints). A Hugging Face directory larger than `STREAM_THRESHOLD_BYTES` (or any
with `stream=True`) is captured without its weights: the model is built with parameters on the
meta device, exported with zero-stride stand-ins (shape and dtype only, no memory), and
`program.meta["lazy_tensors"]` maps each parameter to its safetensors shard. `lower-datatype`
then reads one weight at a time from the shards and keeps only the packed result, and the artifact
writer streams the remaining fp tensors (norms, embeddings, LM head) from the shards into
weights.safetensors, so the fp model is never in memory, not even once. The program of a
streamed compile still holds stand-ins for those fp tensors: `materialize(program)` reads them
when the program itself is to run (`qcompiler.load(OUT)` needs nothing of the sort).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Literal

import torch

from qcompiler.artifact import peak_rss_mb
from qcompiler.errors import CaptureError, QCompilerError, UsageError
# public here too: streamed programs are the driver's (`qcompiler.driver.materialize`)
from qcompiler.lazy_tensors import (iter_lazy_tensor, load_lazy_tensor,  # noqa: F401
                                    materialize, trim_heap)
from qcompiler.program import Program

Emit = Literal["artifact", "program", "ir", "mlir"]
STREAM_THRESHOLD_BYTES = 1 << 30


@dataclass
class CompileResult:
    """What a compile produced: the program, the pipeline that ran, the report, the artifact."""

    program: Program
    pipeline: str
    format: str
    report: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    text: str | None = None  # the IR or MLIR, for emit="ir" / "mlir"
    seconds: float = 0.0
    peak_rss_mb: float = 0.0


def compile(
    model: Any,
    *,
    format: str | None = None,
    pipeline: str | None = None,
    group_size: int | None = None,
    out: str | os.PathLike | None = None,
    force: bool = False,
    emit: Emit | None = None,
    quiet: bool = False,
    verbose: int = 0,
    trust_pickle: bool = False,
    stream: bool | None = None,
    example_inputs: Any = None,
    calibration: Any = None,
    layerwise: bool | None = None,
    sequential: bool = True,
    **pass_manager_options: Any,
) -> CompileResult:
    """Compile `model` (path, zoo:NAME, nn.Module or Program) to `format` or by `pipeline`.

    emit: "artifact" (the default with `out`) writes the artifact directory; "program" (the
    default without) only returns the compiled Program; "ir" / "mlir" return the text in
    `result.text` and write it to `out` when given. A Program passed in is compiled in place.
    calibration: a `qcompiler.calibration.CalibrationConfig` for the calibrated passes (clip,
    gptq, pot-refine, lorc, smooth); None means the default (16 sequences of 128 tokens sampled
    from the model). layerwise: run the calibrated passes one decoder layer at a time over the
    streamed checkpoint (docs/LAYERWISE.md); None: whenever the compile streams. sequential: in
    that mode, each layer calibrates on the outputs of the already-quantized layers before it
    (False: on the fp model's). Other keyword arguments go to the PassManager
    (print_ir_after_all=True, ...).
    """
    from qcompiler.pass_manager import PassManager
    from qcompiler.passes_base import PassContext
    from qcompiler.pipeline import (check_format_options, format_pipeline, parse_pipeline,
                                    resolve_pipeline)

    start = time.perf_counter()
    if format is None and pipeline is None:
        raise UsageError("say what to compile to: format=FMT (see 'qcompile formats') "
                         "or pipeline=SPEC")
    passes = parse_pipeline(resolve_pipeline(pipeline, format, group_size))
    check_format_options(passes)  # bad -g fails here, before the (slow) capture, with exit 2
    pipeline_text = format_pipeline(passes)
    fmt = format or _pipeline_format(passes)
    emit = emit or ("artifact" if out is not None else "program")
    if emit == "artifact" and out is None:
        raise UsageError("emit='artifact' needs out=DIR (the directory to write)")
    if out is not None and emit != "program":
        check_output(Path(out), force, artifact=emit == "artifact")

    from qcompiler.distributed import init_from_env
    from qcompiler.layerwise import run_layerwise, wants_layerwise

    # several processes (torchrun, qcompile --nproc; docs/DISTRIBUTED.md): every rank compiles,
    # calibration is split between them, only rank 0 prints, dumps or writes anything
    group = init_from_env()
    if group is not None and not group.is_writer:
        quiet, verbose = True, 0
        pass_manager_options = {k: v for k, v in pass_manager_options.items()
                                if not k.startswith("print_ir") and k not in
                                ("dump_dir", "reproducer_dir", "timing", "statistics")}

    if layerwise and stream is None:
        stream = True
    program = capture_model(model, stream=stream, trust_pickle=trust_pickle,
                            example_inputs=example_inputs)
    ctx = PassContext(verbose=verbose, quiet=quiet, calibration=calibration)
    ctx.report["model_parameters"] = count_parameters(program)  # before passes add or drop any
    by_layer = bool(layerwise is not False and program.meta.get("lazy_tensors")
                    and wants_layerwise(passes))
    if by_layer:
        program = run_layerwise(program, passes, ctx, sequential=sequential,
                                **pass_manager_options)
    else:
        program = PassManager(passes, **pass_manager_options).run(program, ctx)
    result = CompileResult(program, pipeline_text, fmt, ctx.report)

    if group is not None and not group.is_writer:
        pass  # rank 0 writes; this rank leaves no file behind
    elif emit == "artifact":
        build = {"created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                 "streamed": bool(program.meta.get("lazy_tensors") is not None)}
        if by_layer:  # build.json: how it ran, not what it computed
            build["layerwise"] = "sequential" if sequential else "fp-statistics"
        if group is not None:
            build["processes"] = group.world
        result.path = _write(program, Path(out), pipeline_text, fmt, ctx, force, build, start)
    elif emit in ("ir", "mlir"):
        if emit == "ir":
            from qcompiler.ir import print_program

            result.text = print_program(program)
        else:
            from qcompiler.mlir_emit import emit_mlir

            result.text = emit_mlir(program)
        if out is not None:
            result.path = write_text(result.text, Path(out), force)
    result.seconds = time.perf_counter() - start
    result.peak_rss_mb = peak_rss_mb()
    return result


def _write(program: Program, out: Path, pipeline: str, fmt: str, ctx: Any, force: bool,
           build: dict[str, Any], start: float) -> Path:
    from qcompiler.artifact import write_artifact

    def progress(items: Any) -> Any:
        return ctx.progress(items, desc="write weights")

    build["compile_seconds"] = round(time.perf_counter() - start, 3)
    return write_artifact(program, out, pipeline=pipeline, format=fmt, report=ctx.report,
                          force=force, build=build, progress=progress)


def write_text(text: str, out: Path, force: bool) -> Path:
    """Write IR/MLIR text whole: a temp file renamed into place, never half a file."""
    if out.exists() and not force:
        raise QCompilerError(f"{out} already exists; choose another -o or pass --force")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise QCompilerError(f"cannot write {out}: {e.strerror}") from None
    return out


def _pipeline_format(passes: list[Any]) -> str:
    for p in passes:
        if p.name == "lower-datatype":
            return p.format
    return ""


def check_output(out: Path, force: bool, *, artifact: bool = True) -> None:
    """Fail before compiling when the output could not be written anyway."""
    from qcompiler.artifact import check_replaceable

    if artifact:
        check_replaceable(out, force)
    elif out.exists() and not force:
        raise QCompilerError(f"{out} already exists; choose another -o or pass --force")
    elif out.is_dir():
        raise QCompilerError(f"{out} is a directory; --emit ir/mlir writes a file: choose "
                             "another -o")
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise QCompilerError(f"cannot write {out}: {parent} is not writable")


# ---- capture ---------------------------------------------------------------------------------
def capture_model(model: Any, *, stream: bool | None = None, trust_pickle: bool = False,
                  example_inputs: Any = None) -> Program:
    """`capture`, or streaming capture for a big (or `stream=True`) Hugging Face directory."""
    from qcompiler.capture import capture

    directory = _hf_dir(model)
    if stream is None:
        stream = directory is not None and _checkpoint_bytes(directory) > STREAM_THRESHOLD_BYTES
    if stream:
        if directory is None:
            raise UsageError(f"streaming needs a Hugging Face model directory, not {model}")
        return capture_streaming(directory)
    return capture(model, example_inputs, trust_pickle=trust_pickle)


def count_parameters(program: Program) -> int:
    """Floating-point parameters of the captured model, a tensor shared by two names (tied
    embeddings) counted once: the denominator of the artifact's bits per parameter."""
    seen = {}
    for t in program.tensors().values():
        if t.is_floating_point():
            seen[(t.data_ptr(), t.numel(), tuple(t.shape))] = t.numel()
    return sum(seen.values())


def _hf_dir(model: Any) -> Path | None:
    if isinstance(model, (str, os.PathLike)) and not str(model).startswith("zoo:"):
        path = Path(model)
        if path.is_dir() and (path / "config.json").is_file():
            return path
    return None


def _checkpoint_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def capture_streaming(directory: Path) -> Program:
    """Capture an HF directory without loading its weights (see the module docstring)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    from qcompiler import moe
    from qcompiler.checkpoint_keys import CheckpointKeys, checkpoint_index
    from qcompiler.errors import first_line
    from qcompiler.torch_capture import capture_hf_model, hf_kind

    transformers.utils.logging.set_verbosity_error()
    try:
        config = transformers.AutoConfig.from_pretrained(str(directory), local_files_only=True)
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as e:
        raise CaptureError(f"{directory}/config.json is not a usable model config: "
                           f"{first_line(e)}")
    index = checkpoint_index(directory)
    kind = hf_kind(config)
    auto = transformers.AutoModelForCausalLM if kind == "causal-lm" else transformers.AutoModel
    with _parameters_on_meta():
        hf = auto.from_config(config, dtype=torch.float32)
    keys = CheckpointKeys(hf, index)
    names_of: dict[int, list[str]] = {}
    params: dict[int, torch.nn.Parameter] = {}
    for name, param in hf.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
        params[id(param)] = param
    sources: dict[str, list[str]] = {}
    standins: dict[int, torch.nn.Parameter] = {}
    for pid, names in names_of.items():  # tied parameters share one checkpoint tensor
        source = next((s for s in (keys.source(n) for n in names) if s), None)
        if source is None:
            raise CaptureError(f"cannot stream {directory}: the checkpoint has no tensor for "
                               f"{names[0]}; compile without streaming (--no-stream)")
        for name in names:
            sources[name] = source
        standins[pid] = torch.nn.Parameter(_standin(params[pid]), requires_grad=False)
    for module in hf.modules():
        for attr, param in list(module._parameters.items()):
            if param is not None:
                module._parameters[attr] = standins[id(param)]
    program = capture_hf_model(hf, source=str(directory))
    program.meta["model_dir"] = str(directory.resolve())
    program.meta["lazy_tensors"] = {
        name: src for name, src in sources.items() if program.has_tensor(name)
    }
    moe.split_expert_weights(program)  # now that each expert's checkpoint tensors are known
    return program


def _standin(param: torch.Tensor) -> torch.Tensor:
    """Shape and dtype of `param` on the CPU, backed by one element (stride 0)."""
    return torch.zeros((), dtype=param.dtype).expand(param.shape)


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Build modules with parameters on the meta device and buffers (RoPE tables) for real."""
    original = torch.nn.Module.register_parameter

    def register(module: torch.nn.Module, name: str, param: Any) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = torch.nn.Parameter(
                param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original  # type: ignore[method-assign]

"""`qcompile`: compile a model to a quantized artifact (or print its IR / MLIR).

    qcompile MODEL --format razer4 -o out/          compile to an artifact directory
    qcompile MODEL --format razer4 --emit ir        print the compiled IR to stdout
    qcompile MODEL --format razer4 --emit mlir      print torch-dialect MLIR to stdout
    qcompile eval OUT --reference MODEL             compare against the original model
    qcompile run OUT --prompt "..."                 greedy generation with a compiled model
    qcompile export OUT --to compressed-tensors -o DIR   for vLLM / transformers
    qcompile formats | qcompile zoo | qcompile pipelines     list what is available
    qcompile MODEL -p razer4-max -o out/ --nproc 2  calibrate over 2 processes (or torchrun)
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from qcompiler.cli import common
from qcompiler.errors import QCompilerError, UsageError
from qcompiler.fast_exit import run_and_exit

SUBCOMMANDS = {
    "eval": "qcompiler.cli.eval_cmd",
    "run": "qcompiler.cli.run_cmd",
    "export": "qcompiler.cli.export_cmd",
    "formats": "qcompiler.cli.list_cmd",
    "zoo": "qcompiler.cli.list_cmd",
    "pipelines": "qcompiler.cli.list_cmd",
}


def build_parser() -> common.ArgumentParser:
    p = common.ArgumentParser(
        prog="qcompile",
        description="Compile a model to 4-bit weights (RaZeR, PoT, FP4, INT4, NF4, MX, NVFP4).",
        epilog="Subcommands: qcompile eval|run|export|formats|zoo|pipelines --help",
    )
    common.add_model_args(p)
    p.add_argument("--format", "-f", help="target format, e.g. razer4, fp4, int4, pot4, nvfp4")
    p.add_argument("--pipeline", "-p",
                   help="pass pipeline (a named one such as razer4-max, or 'a,b{k=v},c')")
    p.add_argument("--group-size", "-g", type=int, help="quantization group size along K")
    p.add_argument("--on-indivisible", choices=["error", "pad", "skip"],
                   help="a layer whose K the group size does not divide: fail (default), "
                        "zero-pad K (exact), or keep it in fp")
    p.add_argument("--scale", choices=["fp16", "pow2", "pow2-row"],
                   help="group scales of fp4/razer4 (ZeroQuant-FP): fp16 (default), powers of "
                        "two (pow2), or a real scale per row times powers of two (pow2-row); "
                        "fills every quantizing pass of the pipeline")
    p.add_argument("--quantize-head", action="store_true",
                   help="quantize the LM head in the weight format too (kept in fp by default)")
    p.add_argument("--quantize-embeddings", action="store_true",
                   help="store token embeddings as int8 rows with a scale per row (a tied "
                        "embedding needs --quantize-head as well)")
    p.add_argument("-o", "--output", metavar="OUT", help="artifact directory (or file for ir/mlir)")
    p.add_argument("--emit", choices=["artifact", "ir", "mlir"],
                   help="what to produce (default: artifact with -o, else ir on stdout)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT (only an artifact or an empty directory)")
    p.add_argument("--print-pipeline", action="store_true",
                   help="print the pipeline that --format/--pipeline expands to, and exit")
    common.add_pass_manager_args(p)
    common.add_calibration_args(p)
    g = p.add_argument_group("big checkpoints (docs/LAYERWISE.md)")
    g.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="read a Hugging Face directory's weights from its shards one layer at a "
                        "time (default: for checkpoints over 1 GiB)")
    g.add_argument("--layerwise", action=argparse.BooleanOptionalAction, default=None,
                   help="run calibrated passes one decoder layer at a time (default: whenever "
                        "the compile streams; --layerwise alone implies --stream)")
    g.add_argument("--calib-inputs", choices=["quantized", "fp"], default="quantized",
                   help="layer-wise: each layer calibrates on the outputs of the already "
                        "quantized layers before it (default) or of the fp model")
    g = p.add_argument_group("several processes (docs/DISTRIBUTED.md)")
    g.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="spread calibration over N processes on this machine (torch.distributed;"
                        " gloo on CPU, nccl with a GPU each); for several machines run "
                        "`torchrun ... -m qcompiler.cli.qcompile` instead")
    return p


def console_main() -> None:
    """The console script: `main`, then an exit without the interpreter's slow teardown."""
    run_and_exit(main)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[argv[0]])
        return module.main(argv)
    args = build_parser().parse_args(argv)
    if args.nproc != 1:
        return _launch(args, argv)
    common.quiet_libraries()
    return common.run_main(lambda: _compile_rank(args), lambda: args.verbose)


def _launch(args: argparse.Namespace, argv: list[str]) -> int:
    """`--nproc N`: start N ranks of this same command (qcompiler/launch.py)."""
    if args.nproc < 1:
        sys.stderr.write(f"error: --nproc must be >= 1, got {args.nproc}\n")
        return common.EXIT_USAGE
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        sys.stderr.write("error: --nproc under torchrun: torchrun already started the "
                         "processes; leave out --nproc\n")
        return common.EXIT_USAGE
    from qcompiler.launch import launch

    rest, skip = [], False
    for a in argv:  # the same command without --nproc
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    return launch(args.nproc, rest)


def _compile_rank(args: argparse.Namespace) -> int:
    """`_compile` in the process group when several processes run (torchrun or --nproc)."""
    from qcompiler.launch import run_rank

    def body(group) -> int:
        if group is not None and not group.is_writer:
            args.quiet, args.verbose = True, 0
        return _compile(args)

    return run_rank(body)


def _compile(args) -> int:
    from qcompiler.pipeline import format_pipeline, parse_pipeline, resolve_pipeline

    if args.format is None and args.pipeline is None:
        raise UsageError("say what to compile to: --format FMT (see 'qcompile formats') "
                         "or --pipeline SPEC")
    if args.format is not None:
        _check_format(args.format)
    spec = resolve_pipeline(args.pipeline, args.format, args.group_size, args.on_indivisible,
                            quantize_head=args.quantize_head,
                            quantize_embeddings=args.quantize_embeddings, scale=args.scale)
    passes = parse_pipeline(spec)
    if args.print_pipeline:
        print(format_pipeline(passes))
        return common.EXIT_OK
    emit = args.emit or ("artifact" if args.output else "ir")
    if emit == "artifact" and not args.output:
        raise UsageError("--emit artifact needs -o OUT (the directory to write)")
    from qcompiler.driver import compile as compile_model

    calibration = common.calibration_config(args)  # a bad --calib fails before capture
    result = compile_model(
        args.model, pipeline=spec, out=args.output, force=args.force,
        emit=emit, quiet=args.quiet, verbose=args.verbose, trust_pickle=args.trust_pickle,
        calibration=calibration, stream=args.stream, layerwise=args.layerwise,
        sequential=args.calib_inputs == "quantized", **common.pass_manager_kwargs(args))
    from qcompiler.distributed import is_writer

    if not is_writer():
        return common.EXIT_OK  # rank 0 writes and prints
    if emit == "artifact":
        if not args.quiet:
            from qcompiler.artifact import read_manifest, size_line

            summary = read_manifest(result.path).get("summary") or {}
            size = f": {size_line(summary)}" if "weights_bytes" in summary else ""
            sys.stderr.write(f"wrote {result.path}{size}\n")
    elif args.output is None:
        text = result.text or ""
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return common.EXIT_OK


def _check_format(name: str) -> None:
    from qcompiler import formats

    try:
        formats.check_name(name)  # torch-free: a typo is answered at once
    except QCompilerError as e:
        raise UsageError(str(e)) from None


if __name__ == "__main__":  # `python -m qcompiler.cli.qcompile`: what torchrun and --nproc run
    sys.exit(main())

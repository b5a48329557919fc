"""`qc-opt`: run a pass pipeline over a model and print the IR (the tool lit tests drive).

    qc-opt zoo:llama-tiny -p canonicalize,quantize-report --print-ir-after-all
    qc-opt model.pt2 -p 'lower-datatype{format=razer4,group-size=64}'
    qc-opt zoo:llama-tiny -o a.qcir      # the IR plus a.safetensors (named in a.qcir's header)
    qc-opt a.qcir -p fold-norms          # parse printed (or hand-written) IR and go on from it
    qc-opt cases.qcir -p rotate --split-input-file   # `// -----`-separated cases, one process
    qc-opt --list-passes

The IR goes to stdout; dumps, timing and statistics go to stderr, as in mlir-opt.
"""

from __future__ import annotations

import sys

from qcompiler.cli import common
from qcompiler.errors import UsageError
from qcompiler.fast_exit import run_and_exit


def build_parser() -> common.ArgumentParser:
    p = common.ArgumentParser(prog="qc-opt", description="Run passes over a model, print the IR.")
    p.add_argument("model", nargs="?",
                   help="HF model dir, .pt2 archive, zoo:NAME, or a FILE.qcir of IR")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading a pickled module (runs code from the file)")
    p.add_argument("-p", "--pipeline", default="", help="pass pipeline 'a,b{k=v},c' or a named one")
    p.add_argument("--list-passes", action="store_true",
                   help="list the registered passes with their options")
    p.add_argument("--list-pipelines", action="store_true", help="list the named pipelines")
    p.add_argument("--split-input-file", action="store_true",
                   help="FILE.qcir holds cases separated by '// -----' lines: run and print each")
    p.add_argument("--emit", choices=["ir", "mlir"], default="ir", help="output form")
    p.add_argument("-o", "--output", help="write the output to this file instead of stdout "
                   "(FILE.qcir: also FILE.safetensors with the tensors, so it parses back)")
    common.add_pass_manager_args(p)
    common.add_calibration_args(p)
    return p


def console_main() -> None:
    """The console script: `main`, then an exit without the interpreter's slow teardown."""
    run_and_exit(main)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    common.quiet_libraries()
    return common.run_main(lambda: _run(args), lambda: args.verbose)


def _run(args) -> int:
    if args.list_passes:
        from qcompiler.cli.list_cmd import print_passes

        print_passes()
        return common.EXIT_OK
    if args.list_pipelines:
        from qcompiler.cli.list_cmd import print_pipelines

        print_pipelines()
        return common.EXIT_OK
    if not args.model:
        raise UsageError("missing MODEL (an HF dir, a .pt2 archive, zoo:NAME or FILE.qcir); "
                         "see --help")
    from pathlib import Path

    from qcompiler.capture import capture
    from qcompiler.driver import write_text
    from qcompiler.pass_manager import PassManager
    from qcompiler.passes_base import PassContext
    from qcompiler.pipeline import check_format_options, parse_pipeline, resolve_pipeline

    passes = parse_pipeline(resolve_pipeline(args.pipeline or "", None, None)) if args.pipeline else []
    check_format_options(passes)  # an unknown format or bad group size: exit 2 before capture
    calibration = common.calibration_config(args)  # a bad --calib fails before capture
    if args.split_input_file:
        from qcompiler.cli.qc_opt_split import run_split

        return run_split(args, passes, lambda program: _render(program, args.emit))
    program = capture(args.model, trust_pickle=args.trust_pickle)  # FILE.qcir: parsed IR
    ctx = PassContext(verbose=args.verbose, quiet=args.quiet, calibration=calibration)
    program = PassManager(passes, **common.pass_manager_kwargs(args)).run(program, ctx)
    if args.output and args.output.endswith(".qcir") and args.emit == "ir":
        from qcompiler.ir.io import write_ir

        write_ir(program, Path(args.output))
        return common.EXIT_OK
    text = _render(program, args.emit)
    if args.output:
        write_text(text, Path(args.output), force=True)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return common.EXIT_OK


def _render(program, emit: str) -> str:
    """The program as IR text (`--emit ir`) or MLIR (`--emit mlir`)."""
    if emit == "mlir":
        from qcompiler.mlir_emit import emit_mlir

        return emit_mlir(program)
    from qcompiler.ir import print_program

    return print_program(program)


if __name__ == "__main__":
    raise SystemExit(main())

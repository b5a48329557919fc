"""What `qcompile` and `qc-opt` share: pass-manager flags, error handling, exit codes.

Exit codes: 0 ok, 1 compile error (bad model, failing pass), 2 usage error. A user mistake is one
line on stderr, `error: <what and how to fix>`, never a traceback; an unexpected exception is a
compiler bug and says so (its traceback only with -v).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any, Callable

from qcompiler.errors import QCompilerError, UsageError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse that exits 2 with our one-line format instead of its usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {message}; see '{self.prog} --help'\n")
        raise SystemExit(EXIT_USAGE)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="HF model dir, .pt2 archive, torch.save'd module, or zoo:NAME")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow full unpickling of a torch.save'd module or of pickled members "
                        "of a .pt2 / pytorch_model.bin (runs code from the file)")


def add_pass_manager_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pass manager (MLIR-style)")
    g.add_argument("--print-ir-before", action="append", default=[], metavar="PASS",
                   help="print the IR before PASS (repeatable)")
    g.add_argument("--print-ir-after", action="append", default=[], metavar="PASS",
                   help="print the IR after PASS (repeatable)")
    g.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass")
    g.add_argument("--print-ir-before-all", action="store_true",
                   help="print the IR before every pass")
    g.add_argument("--print-ir-after-change", action="store_true",
                   help="print the IR after a pass only when it changed the program")
    g.add_argument("--print-ir-after-failure", action="store_true",
                   help="print the IR when a pass fails")
    g.add_argument("--dump-dir", metavar="DIR", help="write the IR after each pass to DIR/NN-PASS.qcir")
    g.add_argument("--timing", action="store_true", help="report the time spent in each pass")
    g.add_argument("--pass-statistics", action="store_true", help="report per-pass statistics")
    g.add_argument("--no-verify", action="store_true", help="do not verify after each pass")
    g.add_argument("--reproducer-dir", metavar="DIR",
                   help="write a reproducer here when a pass fails (default: none, except "
                        "for an internal compiler error, kept in a temp dir)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more output on stderr")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes")


def add_calibration_args(p: argparse.ArgumentParser) -> None:
    """--calib/--calib-samples/--calib-seqlen/--calib-sampled/--slac: data for clip, gptq,
    pot-refine, lorc, smooth (see qcompiler/calibration.py); without --calib, sequences sampled
    from the model; --calib FILE reads the second half of FILE's lines (held out from eval)."""
    g = p.add_argument_group("calibration (for clip, gptq, pot-refine, lorc, smooth)")
    g.add_argument("--calib", metavar="FILE",
                   help="calibration text, read from the second half of its lines (held out "
                        "from `qcompile eval --text FILE`; default: sequences sampled from "
                        "the model)")
    g.add_argument("--calib-samples", type=int, default=16, metavar="N",
                   help="number of calibration sequences (default 16)")
    g.add_argument("--calib-seqlen", type=int, default=128, metavar="L",
                   help="tokens per calibration sequence; with --slac the target length "
                        "(default 128)")
    g.add_argument("--calib-sampled", type=int, default=0, metavar="N",
                   help="with --calib: add N sequences sampled from the model (default 0)")
    g.add_argument("--slac", action="store_true",
                   help="sequence-length-aware calibration: lengths spread up to --calib-seqlen")


def calibration_config(args: argparse.Namespace) -> Any:
    """The CalibrationConfig the flags describe (a missing --calib file is a one-line error)."""
    from qcompiler.calibration import CalibrationConfig

    kwargs = dict(samples=args.calib_samples, seqlen=args.calib_seqlen, slac=args.slac)
    if args.calib is None and getattr(args, "calib_sampled", 0):
        raise UsageError("--calib-sampled mixes sampled sequences into --calib text; without "
                         "--calib every sequence is sampled: use --calib-samples N")
    if args.calib is not None:
        kwargs["sampled"] = getattr(args, "calib_sampled", 0)
        return CalibrationConfig.from_file(args.calib, **kwargs)
    return CalibrationConfig(**kwargs)


def pass_manager_kwargs(args: argparse.Namespace) -> dict:
    """PassManager keyword arguments from the parsed flags."""
    return dict(
        verify_each=not args.no_verify,
        print_ir_before=set(args.print_ir_before),
        print_ir_after=set(args.print_ir_after),
        print_ir_after_all=args.print_ir_after_all,
        print_ir_before_all=args.print_ir_before_all,
        print_ir_after_change=args.print_ir_after_change,
        print_ir_after_failure=args.print_ir_after_failure,
        timing=args.timing,
        statistics=args.pass_statistics,
        reproducer_dir=args.reproducer_dir,
        dump_dir=args.dump_dir,
    )


def run_main(body: Callable[[], int], verbose: Callable[[], int] = lambda: 0) -> int:
    """Run a CLI body, turning errors into our exit codes and one-line messages."""
    try:
        return body()
    except UsageError as e:
        sys.stderr.write(f"error: {e}\n")
        return EXIT_USAGE
    except QCompilerError as e:
        if getattr(e, "internal", False) and verbose() and e.__cause__ is not None:
            traceback.print_exception(e.__cause__)  # a pass crashed: show where, with -v
        sys.stderr.write(f"error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as e:  # a compiler bug, not a user mistake
        if verbose():
            traceback.print_exc()
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        sys.stderr.write(
            f"error: internal compiler error: {type(e).__name__}: {first[:300]} "
            "(please report it; -v shows the traceback)\n"
        )
        return EXIT_ERROR


def quiet_libraries() -> None:
    """Silence third-party chatter on stderr (warnings, transformers logs) for clean CLI output."""
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

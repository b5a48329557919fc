"""The pass manager: runs a pipeline, verifying, dumping, timing and counting as MLIR does.

Everything it prints (IR dumps, timing, statistics) goes to stderr, so stdout carries only the
tool's output. When a pass fails (PassError, a verifier error, or a bug raising anything else),
it writes a reproducer directory — the IR before the failing pass (`repro.qcir`, with its
tensors in `repro.safetensors`, so it parses back) and the remaining pipeline (`pipeline.txt`) —
and raises a `PassFailure` whose one-line message names the pass, the passes before it, and the
`qc-opt repro.qcir -p ...` command that replays it.
"""

from __future__ import annotations

import copy
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch.fx as fx

from qcompiler.errors import PassError, QCompilerError, VerifyError
from qcompiler.passes_base import Pass, PassContext, PassResult
from qcompiler.pipeline import format_pipeline, parse_pipeline
from qcompiler.program import Program
from qcompiler.verifier import verify

RULE = "===" + "-" * 73 + "==="


class PassFailure(QCompilerError):
    """A pass failed; the reproducer is in `reproducer_dir`, replayed by `command`."""

    def __init__(self, message: str, *, pass_name: str, passes_run: list[str],
                 reproducer_dir: Path | None, command: str | None, exit_code: int,
                 internal: bool):
        super().__init__(message)
        self.pass_name, self.passes_run = pass_name, passes_run
        self.reproducer_dir, self.command = reproducer_dir, command
        self.exit_code, self.internal = exit_code, internal


@dataclass
class _Record:
    name: str
    seconds: float
    verify_seconds: float
    result: PassResult = field(default_factory=lambda: PassResult(False))


class PassManager:
    """Runs `passes` in order over a Program; the options are mlir-opt's flags."""

    def __init__(
        self,
        passes: Sequence[Pass],
        verify_each: bool = True,
        print_ir_before: Iterable[str] = (),
        print_ir_after: Iterable[str] = (),
        print_ir_before_all: bool = False,
        print_ir_after_all: bool = False,
        print_ir_after_change: bool = False,
        print_ir_after_failure: bool = False,
        timing: bool = False,
        statistics: bool = False,
        reproducer_dir: str | Path | None = None,
        dump_dir: str | Path | None = None,
        stream: Any = None,
    ):
        self.passes = list(passes)
        self.verify_each = verify_each
        self.print_ir_before, self.print_ir_after = set(print_ir_before), set(print_ir_after)
        self.print_ir_before_all, self.print_ir_after_all = print_ir_before_all, print_ir_after_all
        self.print_ir_after_change = print_ir_after_change
        self.print_ir_after_failure = print_ir_after_failure
        self.timing, self.statistics = timing, statistics
        self.reproducer_dir = Path(reproducer_dir) if reproducer_dir else None
        self.dump_dir = Path(dump_dir) if dump_dir else None
        self.stream = stream  # None: sys.stderr at the time of writing
        self._check_pass_names(self.print_ir_before | self.print_ir_after)

    def _check_pass_names(self, names: set[str]) -> None:
        from qcompiler.errors import UsageError
        from qcompiler.pass_registry import all_passes, unknown_pass_message

        known = set(all_passes()) | {p.name for p in self.passes}
        for name in sorted(names - known):
            raise UsageError(unknown_pass_message(name, sorted(known)))

    # ---- running ---------------------------------------------------------------------------
    def run(self, program: Program, ctx: PassContext | None = None) -> Program:
        """Run every pass in place over `program` and return it."""
        ctx = ctx if ctx is not None else PassContext()
        start = time.perf_counter()
        if self.verify_each:
            verify(program)
        self._dump_file(0, "input", program)
        records: list[_Record] = []
        for index, p in enumerate(self.passes):
            snapshot = snapshot_program(program)
            if self.print_ir_before_all or p.name in self.print_ir_before:
                self._dump("Before", p.name, program)
            before = _ir(program) if self.print_ir_after_change else None
            t0 = time.perf_counter()
            try:
                result = p.apply(program, ctx)
                if not isinstance(result, PassResult):
                    raise TypeError(f"{p.name}.apply returned {type(result).__name__}, "
                                    "not a PassResult")
                t1 = time.perf_counter()
                if self.verify_each:
                    verify(program, after=p.name)
                program.gm.recompile()
            except Exception as e:
                from qcompiler.distributed import PeerFailed

                if isinstance(e, PeerFailed):  # another process failed and says why
                    raise
                if self.print_ir_after_failure:
                    self._dump("After", f"{p.name} Failed", program)
                raise self._failure(index, e, snapshot) from e
            records.append(_Record(str(p), t1 - t0, time.perf_counter() - t1, result))
            ctx.report.setdefault("passes", []).append(
                {"pass": str(p), "seconds": round(t1 - t0, 6), "modified": result.modified,
                 "stats": dict(result.stats)})
            if self._wants_after(p.name, before, program):
                self._dump("After", p.name, program)
            self._dump_file(index + 1, p.name, program)
        total = time.perf_counter() - start
        if self.timing:
            self._out().write(timing_report(records, total, self.verify_each))
        if self.statistics:
            self._out().write(statistics_report(records))
        return program

    def _wants_after(self, name: str, before: str | None, program: Program) -> bool:
        """After-all / after-NAME; with after-change alone, after every pass that changed the IR,
        and combined with the others, only when it changed (as in MLIR)."""
        asked = self.print_ir_after_all or name in self.print_ir_after
        if before is None:
            return asked
        return (asked or not (self.print_ir_after_all or self.print_ir_after)) and (
            _ir(program) != before)

    # ---- output ----------------------------------------------------------------------------
    def _out(self) -> Any:
        return self.stream or sys.stderr

    def _dump(self, when: str, name: str, program: Program) -> None:
        out = self._out()
        out.write(f"// -----// IR Dump {when} {name} //----- //\n")
        try:
            out.write(_ir(program))
        except Exception as e:  # the IR after a failure may not even print
            out.write(f"// (the IR cannot be printed: {type(e).__name__}: {e})\n")
        out.flush()

    def _dump_file(self, index: int, name: str, program: Program) -> None:
        if self.dump_dir is None:
            return
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        (self.dump_dir / f"{index:02d}-{name}.qcir").write_text(_ir(program))

    # ---- failure ---------------------------------------------------------------------------
    def _failure(self, index: int, error: Exception, snapshot: Program) -> PassFailure:
        p = self.passes[index]
        ran = [str(q) for q in self.passes[:index]]
        remaining = format_pipeline(self.passes[index:])
        internal = not isinstance(error, QCompilerError)
        directory, command = None, None
        # A reproducer holds the program with its weights (megabytes): written where the user
        # asked (--reproducer-dir), or, for a compiler bug, to a temp dir that is kept for the
        # bug report; never left behind in /tmp for a user mistake the message already explains.
        from qcompiler.distributed import is_writer

        if (self.reproducer_dir is not None or internal) and is_writer():  # rank 0 only
            try:
                directory, command = write_reproducer(
                    snapshot, remaining, self.reproducer_dir, pass_name=p.name,
                    full_pipeline=format_pipeline(self.passes))
            except OSError as e:  # an unwritable reproducer dir must not hide the real error
                self._out().write(f"warning: cannot write the reproducer: {e}\n")
        if isinstance(error, (PassError, VerifyError)):
            cause = str(error)
        elif isinstance(error, QCompilerError):
            cause = f"{p.name}: {error}"
        else:
            first = (str(error).strip().splitlines() or [""])[0][:300]
            cause = f"{p.name}: internal error: {type(error).__name__}: {first}"
        before = f"after {','.join(ran)}" if ran else "as the first pass"
        replay = (f"replay with: {command}" if command
                  else f"reproducer in {directory}" if directory
                  else "save a reproducer with --reproducer-dir DIR")
        return PassFailure(
            f"{cause} (pass {p.name} failed {before}; {replay})", pass_name=p.name,
            passes_run=ran, reproducer_dir=directory, command=command,
            exit_code=getattr(error, "exit_code", 1), internal=internal)


def run_pipeline(program: Program, spec: str, ctx: PassContext | None = None,
                 **options: Any) -> Program:
    """Parse `spec` and run it over `program` (the Python API's one-liner)."""
    return PassManager(parse_pipeline(spec), **options).run(program, ctx)


def _ir(program: Program) -> str:
    from qcompiler.ir import print_program

    return print_program(program)


def snapshot_program(program: Program) -> Program:
    """A copy of the graph that shares the tensors: cheap enough to take before every pass,
    and exact because passes replace tensors instead of mutating them."""
    graph = copy.deepcopy(program.gm.graph)  # fx copies nodes iteratively, meta shallowly
    gm = fx.GraphModule(program.gm, graph)
    return Program(gm, program.example_inputs, program.input_names, list(program.dynamic_dims),
                   program.kind, program.source, copy.deepcopy(program.meta))


def write_reproducer(program: Program, pipeline: str, directory: Path | None, *,
                     pass_name: str, full_pipeline: str) -> tuple[Path, str | None]:
    """Write repro.qcir (the IR before the failing pass) with its tensors (repro.safetensors)
    and pipeline.txt; return the dir and the one `qc-opt repro.qcir -p ...` that replays it."""
    directory = Path(tempfile.mkdtemp(prefix="qc-repro-")) if directory is None else directory
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pipeline.txt").write_text(pipeline + "\n")
    header = f"// reproducer: the IR before {pass_name}\n// pipeline: {pipeline}\n"
    quoted = f"'{pipeline}'" if "'" not in pipeline else shlex.quote(pipeline)
    target = directory / "repro.qcir"
    try:
        from qcompiler.ir.io import write_ir

        write_ir(program, target, header=header, check=True)
        return directory, f"qc-opt {shlex.quote(str(target))} -p {quoted}"
    except Exception as e:  # a program the IR cannot hold can still be replayed from source
        (directory / "repro.safetensors").unlink(missing_ok=True)
        target.write_text(header + f"// (cannot write the IR: {type(e).__name__}: {e})\n")
    source = program.source
    if source and (source.startswith("zoo:") or Path(source).exists()):
        full = f"'{full_pipeline}'" if "'" not in full_pipeline else shlex.quote(full_pipeline)
        return directory, f"qc-opt {shlex.quote(source)} -p {full}"
    return directory, None


# ---- reports -------------------------------------------------------------------------------
def timing_report(records: list[_Record], total: float, verified: bool) -> str:
    """MLIR's `-mlir-timing` table: wall time per pass, the verifier, and the total."""
    total = max(total, 1e-9)
    lines = [RULE, "... Execution time report ...".center(79).rstrip(), RULE,
             f"  Total Execution Time: {total:.4f} seconds", "",
             "  ----Wall Time----  ----Name----"]
    rows = [(r.seconds, r.name) for r in records]
    if verified:
        rows.append((sum(r.verify_seconds for r in records), "(A) verifier"))
    rows.append((max(total - sum(s for s, _ in rows), 0.0), "(A) pass manager (snapshots, dumps)"))
    rows.append((total, "Total"))
    for seconds, name in rows:
        lines.append(f"  {seconds:8.4f} ({100 * seconds / total:5.1f}%)  {name}")
    return "\n".join(lines) + "\n\n"


def statistics_report(records: list[_Record]) -> str:
    """MLIR's `-mlir-pass-statistics`: each pass and its counters."""
    lines = [RULE, "... Pass statistics report ...".center(79).rstrip(), RULE]
    for r in records:
        lines.append(r.name)
        for key, value in r.result.stats.items():
            lines.append(f"  (S) {value} {key}")
    return "\n".join(lines) + "\n\n"

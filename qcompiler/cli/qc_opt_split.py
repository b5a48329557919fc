"""`qc-opt FILE.qcir --split-input-file`: several independent cases in one file, as in mlir-opt.

    // RUN: qc-opt %s -p rotate --split-input-file 2>&1 | FileCheck %s
    qc.func @main(...) { ... }      // case 1
    // -----
    qc.func @main(...) { ... }      // case 2: an input the pass must refuse

A line `// -----` separates the cases. Each is parsed, run through the pipeline and printed on
its own (with fresh calibration data), the outputs separated by `// -----` lines. A case that
fails prints its one `error:` line (FILE:LINE counted in the whole file) and the next case still
runs; the exit code is the worst case's. Why: a lit RUN line costs a Python + torch start-up
(seconds), so a pass's positive and negative cases share one process.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from qcompiler.cli import common
from qcompiler.errors import QCompilerError, UsageError

SEPARATOR = "// -----"


def split_cases(text: str) -> list[str]:
    """The cases of `text`, each padded with blank lines so its line numbers stay the file's."""
    cases: list[str] = []
    current: list[str] = []
    start = 0
    for i, line in enumerate(text.splitlines(keepends=True)):
        if line.strip() == SEPARATOR:
            cases.append("\n" * start + "".join(current))
            current, start = [], i + 1
        else:
            current.append(line)
    cases.append("\n" * start + "".join(current))
    return cases


def run_split(args: Any, passes: list[Any], render: Callable[[Any], str]) -> int:
    """Run `passes` over every case of the .qcir file `args.model`; print each result."""
    from qcompiler.ir.io import parse_program
    from qcompiler.pass_manager import PassManager
    from qcompiler.passes_base import PassContext

    path = Path(args.model)
    if path.suffix != ".qcir":
        raise UsageError(f"--split-input-file needs a FILE.qcir, got {args.model}")
    if args.output:
        raise UsageError("--split-input-file prints every case to stdout; leave out -o")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise QCompilerError(f"cannot read {path}: {e}") from None

    def one(case: str) -> int:
        program = parse_program(case, str(path), path.parent)
        ctx = PassContext(verbose=args.verbose, quiet=args.quiet,
                          calibration=common.calibration_config(args))  # inputs differ per case
        program = PassManager(passes, **common.pass_manager_kwargs(args)).run(program, ctx)
        out = render(program)
        sys.stdout.write(out if out.endswith("\n") else out + "\n")
        return common.EXIT_OK

    worst = common.EXIT_OK
    for index, case in enumerate(split_cases(text)):
        if index:
            sys.stdout.write(SEPARATOR + "\n")
        sys.stdout.flush()  # keep stdout and stderr in order under `2>&1`
        rc = common.run_main(lambda case=case: one(case), lambda: args.verbose)
        sys.stderr.flush()
        worst = max(worst, rc)
    return worst

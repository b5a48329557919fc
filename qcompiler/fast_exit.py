"""Leave a command-line process without CPython's teardown, once its work and atexit are done.

Once torch is imported, the interpreter's own shutdown (clearing every module, then collecting
garbage over torch's ~300k objects several times) costs 1.3-1.5 CPU-s: a third of a short
`qc-opt` run, paid by every RUN line of the lit suite (bench/results/lit_suite.md). Nothing in
that teardown is needed by a process that is about to end: every atexit handler still runs
(logging, thread pools, temporary directories, multiprocessing, file locks), and only then the
process leaves with os._exit, as mypy's fast exit does.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Callable


def run_and_exit(main: Callable[[], int]) -> None:
    """Run a console script's `main` and exit with its code, skipping the teardown.

    Call it first thing, before torch or any library has registered an atexit handler: ours is
    then the first registered, so it runs last. An exception that escapes `main` (argparse's
    SystemExit, an interrupt) takes the ordinary exit.
    """
    result: list[int] = []
    atexit.register(_exit_after_handlers, result)
    rc = main()
    result.append(rc)
    sys.exit(rc)


def _exit_after_handlers(result: list[int]) -> None:
    if not result:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe or stream: the interpreter reports it as usual
        return
    os._exit(result[0])

"""`python -m qcompiler.testing.run_scripts OUTDIR SCRIPT...`: lit test scripts in one process.

Each `emit-*.py` lit script imports torch and triton to print a few kernels: ~2.5 CPU-s of
start-up for well under a second of work. Run here one after another, each as `__main__` with
`sys.argv = [SCRIPT, OUTDIR/NAME.d]` and its stdout in OUTDIR/NAME.out (NAME: the script's file
name without `.py`), they pay it once; the lit test then checks each output against its
script's own CHECK lines (`FileCheck SCRIPT < OUTDIR/NAME.out`). A script that raises stops the
run with its traceback and exit code 1, naming the script. Like qc-opt, it leaves without the
interpreter's teardown (qcompiler/fast_exit.py).
"""

from __future__ import annotations

import contextlib
import runpy
import sys
import traceback
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.stderr.write("usage: python -m qcompiler.testing.run_scripts OUTDIR SCRIPT...\n")
        return 2
    out_dir = Path(argv[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    saved_argv = sys.argv
    for script in argv[1:]:
        name = Path(script).stem
        sys.argv = [script, str(out_dir / f"{name}.d")]
        try:
            with open(out_dir / f"{name}.out", "w") as out, contextlib.redirect_stdout(out):
                runpy.run_path(script, run_name="__main__")
        except SystemExit as e:  # a script's own exit: only a failing one stops the run
            if e.code not in (None, 0):
                sys.stderr.write(f"run_scripts: {script} exited with {e.code}\n")
                return 1
        except Exception:
            traceback.print_exc()
            sys.stderr.write(f"run_scripts: {script} failed\n")
            return 1
        finally:
            sys.argv = saved_argv
    return 0


if __name__ == "__main__":
    from qcompiler.fast_exit import run_and_exit

    run_and_exit(lambda: main(sys.argv[1:]))

"""qcompiler.fast_exit: the console scripts skip CPython's teardown, and nothing else.

Each case runs a small script in a fresh interpreter (the helper ends the process), and checks
what a caller sees: the exit code, buffered output that was never flushed by hand, atexit
handlers and temporary directories registered after the helper, and the real console scripts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

BIN = Path(sys.executable).parent


def run_script(body: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                          text=True, timeout=60)


def test_exit_code_output_and_atexit_handlers(tmp_path):
    proc = run_script("""
        import atexit, sys, tempfile
        from pathlib import Path
        from qcompiler.fast_exit import run_and_exit

        class Noisy:  # a module global's __del__ runs only in the teardown being skipped
            def __del__(self):
                print("teardown ran")

        noisy = Noisy()

        def main():
            out = Path(sys.argv[1])
            atexit.register(lambda: (out / "handler").write_text("ran"))
            global tmp
            tmp = tempfile.TemporaryDirectory(dir=out)  # removed by weakref's atexit hook
            (out / "tmpdir").write_text(tmp.name)
            sys.stdout.write("buffered, not flushed")
            sys.stderr.write("to stderr")
            return 3

        run_and_exit(main)
    """, tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "buffered, not flushed"
    assert proc.stderr == "to stderr"
    assert (tmp_path / "handler").read_text() == "ran"
    assert not Path((tmp_path / "tmpdir").read_text()).exists()


def test_an_escaping_exit_takes_the_ordinary_path(tmp_path):
    proc = run_script("""
        import sys
        from qcompiler.fast_exit import run_and_exit

        class Noisy:
            def __del__(self):
                print("teardown ran")

        noisy = Noisy()

        def main():
            raise SystemExit(2)

        run_and_exit(main)
    """, tmp_path)
    assert proc.returncode == 2
    assert "teardown ran" in proc.stdout  # the helper stood aside: the interpreter's own exit


def test_console_scripts_keep_their_exit_codes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ok = subprocess.run([str(BIN / "qc-opt"), "--list-passes"], capture_output=True, text=True,
                        env=env, timeout=300)
    assert ok.returncode == 0 and "canonicalize" in ok.stdout, ok.stderr
    bad = subprocess.run([str(BIN / "qc-opt"), "zoo:llama-tiny", "-p", "canonicalise"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("error: unknown pass 'canonicalise'; did you mean "
                                  "'canonicalize'?")
    missing = subprocess.run([str(BIN / "qcompile"), str(tmp_path / "nope"), "--format", "int4",
                              "-o", str(tmp_path / "out")], capture_output=True, text=True,
                             env=env, timeout=300)
    assert missing.returncode == 1 and missing.stderr.startswith("error: no such file")
    assert not (tmp_path / "out").exists()

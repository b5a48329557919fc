"""`%not CMD...` for lit: run CMD, succeed iff it failed, and check its exit code if asked.

`%not --code 2 qcompile ...` asserts the exact exit code (usage errors are 2, compile errors 1),
which plain `not` cannot; stdout/stderr pass through so FileCheck can read the message.
"""

from __future__ import annotations

import subprocess
import sys


def main(argv: list[str]) -> int:
    expected = None
    if argv[:1] == ["--code"]:
        expected, argv = int(argv[1]), argv[2:]
    code = subprocess.call(argv)
    if expected is not None:
        if code != expected:
            sys.stderr.write(f"not: expected exit code {expected}, got {code}\n")
            return 1
        return 0
    return 0 if code != 0 else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

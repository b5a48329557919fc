"""Errors that reach the user as one line.

Every mistake a user can make (bad path, unknown format, shape that the group size does not
divide) raises a `QCompilerError` whose message says what is wrong and how to fix it. The CLI
prints it as `error: <message>` with no traceback; anything else escaping is a compiler bug.
"""

from __future__ import annotations


class QCompilerError(Exception):
    """A user-facing error: the message is one line that says what to do."""

    exit_code = 1


class UsageError(QCompilerError):
    """Bad command-line usage (unknown flag value, bad pipeline syntax): exit code 2."""

    exit_code = 2


class CaptureError(QCompilerError):
    """The model could not be read or exported."""


class PassError(QCompilerError):
    """A pass rejected the program; the message starts with the pass name."""

    def __init__(self, pass_name: str, message: str):
        super().__init__(f"{pass_name}: {message}")
        self.pass_name = pass_name


class DecodeUnsupported(QCompilerError):
    """The graph has no shape the KV-cache rewrite (qcompiler/decode_program.py) knows how to
    give a cache; callers fall back to re-running the prefix."""


class VerifyError(QCompilerError):
    """The program is malformed after a pass (a compiler bug or a bad input program)."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters): a one-line
    error that wraps a library's multi-line one."""
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]

"""qcompiler: an MLIR-style quantization compiler for large language models."""

from __future__ import annotations

# Import the function eagerly: a lazy wrapper named `capture` would be replaced by the submodule
# `qcompiler.capture` the first time anything imports that module.
from qcompiler.capture import capture
from qcompiler.errors import QCompilerError
from qcompiler.program import Program
from qcompiler.version import __version__

__all__ = ["Program", "QCompilerError", "__version__", "capture", "compile", "load"]


def compile(model, **options):  # noqa: A001  (qcompiler.compile, as the design names it)
    """Compile a model: see `qcompiler.driver.compile` for the options."""
    from qcompiler.driver import compile as _compile

    return _compile(model, **options)


def load(path, **options):
    """Load a compiled artifact as a runnable module: see `qcompiler.runtime.load`."""
    from qcompiler.runtime import load as _load

    return _load(path, **options)

"""qcompiler: an MLIR-style quantization compiler for large language models.

Importing the package is cheap (no torch): `capture` only dispatches, and `Program`, `compile`
and `load` import what they need when first used. So `qc-opt`, `qcompile` and the lit tests'
error paths exit on a usage mistake without paying seconds of CPU for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Bound eagerly: a lazy attribute named `capture` would be replaced by the submodule
# `qcompiler.capture` the first time anything imports that module (qcompiler/capture.py keeps
# its own imports deferred for this).
from qcompiler.capture import capture
from qcompiler.errors import QCompilerError
from qcompiler.version import __version__

if TYPE_CHECKING:
    from qcompiler.program import Program

__all__ = ["Program", "QCompilerError", "__version__", "capture", "compile", "load"]


def __getattr__(name: str) -> Any:
    """`qcompiler.Program`, imported (with torch) on first use."""
    if name == "Program":
        from qcompiler.program import Program

        return Program
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def compile(model, **options):  # noqa: A001  (qcompiler.compile, as the design names it)
    """Compile a model: see `qcompiler.driver.compile` for the options."""
    from qcompiler.driver import compile as _compile

    return _compile(model, **options)


def load(path, **options):
    """Load a compiled artifact as a runnable module: see `qcompiler.runtime.load`."""
    from qcompiler.runtime import load as _load

    return _load(path, **options)

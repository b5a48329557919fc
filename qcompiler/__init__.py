"""qcompiler: an MLIR-style quantization compiler for large language models."""

from __future__ import annotations

# Import the function eagerly: a lazy wrapper named `capture` would be replaced by the submodule
# `qcompiler.capture` the first time anything imports that module.
from qcompiler.capture import capture
from qcompiler.errors import QCompilerError
from qcompiler.program import Program

__version__ = "0.1.0"
__all__ = ["Program", "QCompilerError", "__version__", "capture"]

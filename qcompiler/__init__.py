"""qcompiler: an MLIR-style quantization compiler for large language models."""

from __future__ import annotations

from qcompiler.errors import QCompilerError
from qcompiler.program import Program

__version__ = "0.1.0"
__all__ = ["Program", "QCompilerError", "__version__", "capture"]


def capture(source, *args, **kwargs) -> Program:
    """Capture a model (module, HF dir, .pt2, pickled module or `zoo:` name) as a Program."""
    from qcompiler.capture import capture as _capture

    return _capture(source, *args, **kwargs)

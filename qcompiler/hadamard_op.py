"""`qc.hadamard`: an online Hadamard transform of the last dimension, as a graph op.

    %h = qc.hadamard(%mul_15) : tensor<1x?x256xf32>

QuaRot rotates the input of down_proj online (it cannot be folded into up_proj because the
SiLU-gated product sits between them); the matching Hᵀ is folded into down_proj's weight, so
the function is unchanged while the activation down_proj sees has no outlier channel. The op
computes `x @ H` with `H = qcompiler.hadamard.hadamard(x.shape[-1])` (orthogonal, ±1/√n); a
kernel would use the fast Walsh-Hadamard transform, the reference (qcompiler/dialect/impls.py)
uses a matmul in fp32 (fp64 for fp64 inputs). The op is defined, with its condition that the
last dimension has a Hadamard matrix, in qcompiler/dialect/defs.py; this module keeps the
handles passes use, and importing it registers the qc ops.
"""

from __future__ import annotations

from typing import Any

from qcompiler.dialect.registry import custom_op, overload

hadamard_transform = custom_op("hadamard")  # callable: hadamard_transform(x)


def hadamard_op() -> Any:
    """The `qc::hadamard` overload, for passes that insert it."""
    return overload("hadamard")

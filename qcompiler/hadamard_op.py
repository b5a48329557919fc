"""`qc::hadamard`: an online Hadamard transform of the last dimension, as a graph op.

    %h = qc.hadamard(%mul_15) : tensor<1x?x256xf32>

QuaRot rotates the input of down_proj online (it cannot be folded into up_proj because the
SiLU-gated product sits between them); the matching Hᵀ is folded into down_proj's weight, so
the function is unchanged while the activation down_proj sees has no outlier channel. The op
computes `x @ H` with `H = qcompiler.hadamard.hadamard(x.shape[-1])` (orthogonal, ±1/√n); a
kernel would use the fast Walsh-Hadamard transform, this reference uses a matmul in fp32
(fp64 for fp64 inputs).

A fake implementation lets programs containing it trace, export, save and load; importing
this module registers the op (a loader must import it before reading such an archive).
"""

from __future__ import annotations

import torch

from qcompiler.hadamard import hadamard

NAMESPACE = "qc"


@torch.library.custom_op(f"{NAMESPACE}::hadamard", mutates_args=())
def hadamard_transform(x: torch.Tensor) -> torch.Tensor:
    """x @ H along the last dimension, H the orthogonal Hadamard matrix of that size."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    h = hadamard(x.shape[-1], dtype).to(device=x.device)
    return (x.to(dtype) @ h).to(x.dtype)


@hadamard_transform.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def hadamard_op() -> torch._ops.OpOverload:
    """The `qc::hadamard` overload, for passes that insert it."""
    return torch.ops.qc.hadamard.default

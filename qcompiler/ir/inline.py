"""Inline parameter values for hand-written IR, so a lit test needs no model and no tensors file.

    %w = qc.param "fc.weight" : tensor<2x2xf32> {value = [[1.0, 2.0], [3.0, 4.0]]}
    %b = qc.param "fc.bias" : tensor<2xf32> {value = 0.5}        // a scalar fills the tensor
    %v = qc.param "up.weight" : tensor<64x32xf32> {random = 7}   // seeded: same values each run

`random = SEED` draws floats from N(0, 0.02^2) (the scale of an LLM's initial weights, so
quantization passes see realistic magnitudes) and integers uniformly from [0, 16).
"""

from __future__ import annotations

from typing import Any

import torch

from qcompiler.ir.parser import parse_tensor_type

RANDOM_STD = 0.02


def init_value(type_text: str, attrs: dict[str, Any]) -> torch.Tensor:
    """The tensor a param's `{value = ...}` or `{random = SEED}` describes (ValueError if bad)."""
    if not type_text.startswith("tensor<"):
        raise ValueError(f"a param must be a tensor, not {type_text}")
    dims, dtype = parse_tensor_type(type_text)
    if any(d is None for d in dims):
        raise ValueError(f"a param needs static sizes, not {type_text}")
    shape = [int(d) for d in dims if d is not None]
    if "value" in attrs and "random" in attrs:
        raise ValueError("give either value or random, not both")
    if "random" in attrs:
        seed = attrs["random"]
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"random = {seed!r}: the seed must be an integer")
        gen = torch.Generator().manual_seed(seed)
        if dtype.is_floating_point:
            return (torch.randn(shape, generator=gen) * RANDOM_STD).to(dtype)
        return torch.randint(0, 16, shape, generator=gen).to(dtype)
    value = attrs["value"]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.full(shape, value, dtype=dtype)
    try:
        tensor = torch.tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"value is not a nested list of numbers: {e}") from None
    if list(tensor.shape) != shape:
        raise ValueError(f"value has shape {list(tensor.shape)} but the type says {shape}")
    return tensor

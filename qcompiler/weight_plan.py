"""Weight plans: how a pass that chooses quantized values hands them to `lower-datatype`.

A pass such as clip, gptq, pot-refine or lorc decides the quantized values of a layer itself.
It keeps the graph in floating point (so later passes and the IR stay ordinary) by replacing the
weight with its fake-quantized value `fmt.dequantize(qt)`, and records the exact `QTensor` in
`program.meta["weight_plans"][layer]`:

    {"format": "razer4", "group_size": 128, "by": "gptq", "qtensor": qt,
     "weight": <the tensor now stored as the weight>, "original": <the fp weight before any plan>}

`lower-datatype` then uses `qtensor` as is (bit-exact, no second scale search) when the plan's
format and group size are the ones it would use AND the layer's weight is still the recorded
tensor (the same object, or bitwise equal after a `Program.clone`); any pass that changes the
weight afterwards (smoothing, rotation) thereby invalidates the plan without having to know
about it. `original` lets a later planning pass (lorc after gptq) measure error against the
unquantized weight; `lower-datatype` drops a plan once it has used it, freeing that copy.

The plans live in a `WeightPlans` dict that is never mutated (passes write a new one) and that
deep-copies as itself: the pass manager snapshots `program.meta` before every pass, and copying
every planned weight each time would double the memory of a big model for nothing.
"""

from __future__ import annotations

from typing import Any

import torch

KEY = "weight_plans"
# program.meta flag (the layer-wise runner sets it on a one-layer program for its last planning
# pass): record_plan overwrites the fp weight with its fake-quantized value in place and keeps
# the relative error in the record ("rel_error") instead of the fp weight ("original" is then
# the plan's own weight)
IN_PLACE = "plans_in_place"


class WeightPlans(dict):
    """Layer -> plan record. Immutable by convention; shared (not copied) by deepcopy."""

    def __deepcopy__(self, memo: dict) -> WeightPlans:
        return self


def plans(program: Any) -> WeightPlans:
    return program.meta.get(KEY) or WeightPlans()


def record_plan(program: Any, layer: str, weight_name: str, qt: Any, *, by: str) -> torch.Tensor:
    """Set the weight to `dequantize(qt)` (in its dtype) and record the plan; returns the new
    weight tensor (the object lower-datatype will check)."""
    from qcompiler import formats

    old = program.get_tensor(weight_name)
    previous = plans(program).get(layer)
    original = previous["original"] if previous and previous["weight"] is old else old
    fake = formats.get(qt.format).dequantize(qt).to(old.dtype)
    extra: dict[str, Any] = {}
    if program.meta.get(IN_PLACE) and 0 not in old.stride():
        # the layer-wise runner's last planning pass: the fp weight becomes its fake-quantized
        # value in its own storage (no second copy of the layer); its error is measured first
        extra["rel_error"] = relative_error(original, fake)
        if original is old:
            original = None  # the fp values are gone; nothing may requantize from them
        old.copy_(fake)
        del fake
    else:
        program.set_tensor(weight_name, fake)
    stored = program.get_tensor(weight_name)
    record = {"format": qt.format, "group_size": qt.group_size, "by": by, "qtensor": qt,
              "weight": stored, "original": original if original is not None else stored,
              **extra}
    program.meta[KEY] = WeightPlans({**plans(program), layer: record})
    return stored


def relative_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """Σ(ŵ−w)²/Σw², as lower-datatype reports it (6 significant digits)."""
    w = w.detach().to(torch.float32)
    norm = float((w * w).sum())
    err = float(((w_hat - w) ** 2).sum())
    return float(f"{err / norm:.6g}") if norm > 0 else 0.0


def valid_plan(program: Any, layer: str, weight_name: str) -> dict[str, Any] | None:
    """The layer's plan if its weight is still the recorded one, else None."""
    record = plans(program).get(layer)
    if record is None or not program.has_tensor(weight_name):
        return None
    current = program.get_tensor(weight_name)
    recorded = record["weight"]
    if current is recorded:
        return record
    if (current.shape == recorded.shape and current.dtype == recorded.dtype
            and current.device.type != "meta" and torch.equal(current, recorded)):
        return record
    return None


def original_weight(program: Any, layer: str, weight_name: str) -> torch.Tensor:
    """The fp weight before any plan (the current weight when the layer has no valid plan)."""
    record = valid_plan(program, layer, weight_name)
    return record["original"] if record is not None else program.get_tensor(weight_name)


def drop_plan(program: Any, layer: str) -> None:
    """Forget the layer's plan (the key goes when the last plan does)."""
    current = plans(program)
    if layer in current:
        rest = WeightPlans({k: v for k, v in current.items() if k != layer})
        if rest:
            program.meta[KEY] = rest
        else:
            program.meta.pop(KEY, None)


def describe(record: dict[str, Any]) -> str:
    """`razer4 g128 by gptq` (`fp4 g128 scale=pow2 by gptq` with a scale constraint): what the
    printer shows on the weight's param line."""
    scale = record["qtensor"].opts.get("scale")
    return (f"{record['format']} g{record['group_size']}"
            f"{f' scale={scale}' if scale else ''} by {record['by']}")

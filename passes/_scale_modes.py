"""The `scale` option of the weight-quantizing passes (lower-datatype, clip, gptq, lorc).

ZeroQuant-FP's scale constraints, for formats with a `scale` option (fp4, razer4): `pow2` (M1)
makes every group scale a power of two, `pow2-row` (M2) a per-row real scale times powers of
two, so FP4 -> FP8 casting is a shift. Every pass that quantizes a layer must be given the same
value, as with `format` (`--scale` fills them all); a weight plan made with other scales is
quantized again by lower-datatype. Kept apart from _weight_common.py, which imports
lower-datatype's matcher, so that lower-datatype can import this.
"""

from __future__ import annotations

from typing import Any, Literal

from qcompiler.errors import PassError

ScaleMode = Literal["fp16", "pow2", "pow2-row"]


def scale_options(pass_name: str, fmt: Any, scale: str | None,
                  whole_rows: bool = True) -> dict[str, str]:
    """The format options for the pass's `scale` ({} when unset or fp16: the default bytes), or
    a one-line PassError when the format has no such option or the pass cannot keep it
    (`whole_rows=False`: the pass quantizes a group at a time, and pow2-row needs the row)."""
    if scale is None or scale == "fp16":
        return {}
    if "scale" not in dict(fmt.options):
        from qcompiler import formats

        have = [n for n in formats.names() if "scale" in dict(formats.get(n).options)]
        raise PassError(pass_name, f"format {fmt.name} has no scale option; scale={scale} "
                        f"applies to {', '.join(have)}")
    if scale == "pow2-row" and not whole_rows:
        raise PassError(pass_name, "scale=pow2-row shares one real scale per row, which a "
                        "group-at-a-time quantizer cannot keep; use scale=pow2, or plan the "
                        "layer with clip (its own search) or lower-datatype")
    return {"scale": scale}


def plan_scale(record: dict[str, Any]) -> str:
    """The scale mode a weight plan was quantized with (fp16 when it has none)."""
    return record["qtensor"].opts.get("scale", "fp16")

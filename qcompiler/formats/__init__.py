"""The datatype library: every quantization format as one object in one registry.

    from qcompiler import formats
    fmt = formats.get("razer4")
    q = fmt.quantize(w, group_size=128)          # QTensor (packed codes, scales, metadata)
    w_hat = fmt.dequantize(q)

Passes, kernels and reports ask the `Format` (bits, scale type, code table, bits per weight,
quantize/dequantize) instead of re-implementing a codebook. The built-in formats are loaded on
first use, so importing this package stays cheap. Layouts: docs/CONTRACTS.md.
"""

from __future__ import annotations

import difflib
import importlib

from qcompiler.errors import QCompilerError
from qcompiler.formats.base import Format, QTensor

_REGISTRY: dict[str, Format] = {}
_LOADED = False

# module -> the Format instances it defines, in the order `names()` lists them
_BUILTIN: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("integer", ("INT4", "INT4_SYM", "INT3", "INT2")),
    ("fp4", ("FP4",)),
    ("razer", ("RAZER4", "RAZER4_KV")),
    ("pot", ("POT4", "POT3", "POT2")),
    ("nf4", ("NF4",)),
    ("dint", ("DINT4",)),
    ("mx", ("MXFP4",)),
    ("nvfp4", ("NVFP4",)),
    ("nvfp4_razer", ("NVFP4_RAZER",)),
    ("fp8_e4m3", ("FP8_E4M3",)),
    ("int8", ("INT8",)),
)


def register(fmt: Format) -> Format:
    """Add a format under `fmt.name`; registering a different object under a taken name fails."""
    other = _REGISTRY.get(fmt.name)
    if other is not None and other is not fmt:
        raise ValueError(f"format {fmt.name!r} registered twice")
    _REGISTRY[fmt.name] = fmt
    return fmt


def get(name: str) -> Format:
    """The format called `name`, or a one-line QCompilerError listing the known ones."""
    _load()
    fmt = _REGISTRY.get(name)
    if fmt is None:
        known = list(_REGISTRY)
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f", did you mean '{close[0]}'?" if close else ""
        raise QCompilerError(f"unknown format '{name}'; known formats: {', '.join(known)}{hint}")
    return fmt


def names() -> list[str]:
    """Registered format names, built-ins first in a fixed order."""
    _load()
    return list(_REGISTRY)


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for module, attrs in _BUILTIN:
        mod = importlib.import_module(f"qcompiler.formats.{module}")
        for attr in attrs:
            register(getattr(mod, attr))


__all__ = ["Format", "QTensor", "get", "names", "register"]

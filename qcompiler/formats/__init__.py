"""The datatype library: every quantization format as one object in one registry.

    from qcompiler import formats
    fmt = formats.get("razer4")
    q = fmt.quantize(w, group_size=128)          # QTensor (packed codes, scales, metadata)
    w_hat = fmt.dequantize(q)

Passes, kernels and reports ask the `Format` (bits, scale type, code table, bits per weight,
quantize/dequantize) instead of re-implementing a codebook. The built-in formats are loaded on
first use, so importing this package stays cheap and torch-free: `check_name` answers a
mistyped `--format` without loading torch (a usage error should not cost two seconds).
Layouts: docs/CONTRACTS.md.
"""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING, Any

from qcompiler.errors import QCompilerError

if TYPE_CHECKING:
    from qcompiler.formats.base import Format, QTensor

_REGISTRY: dict[str, Format] = {}
_LOADED = False

# (module, Format instance, its name) in the order `names()` lists them: the names are written
# out so a name can be checked without importing the modules (torch); `_load` checks they match
_BUILTIN: tuple[tuple[str, str, str], ...] = (
    ("integer", "INT4", "int4"), ("integer", "INT4_SYM", "int4-sym"), ("integer", "INT3", "int3"),
    ("integer", "INT2", "int2"), ("fp4", "FP4", "fp4"), ("razer", "RAZER4", "razer4"),
    ("razer", "RAZER4_KV", "razer4-kv"), ("pot", "POT4", "pot4"), ("pot", "POT3", "pot3"),
    ("pot", "POT2", "pot2"), ("nf4", "NF4", "nf4"), ("dint", "DINT4", "dint4"),
    ("mx", "MXFP4", "mxfp4"), ("nvfp4", "NVFP4", "nvfp4"),
    ("nvfp4_razer", "NVFP4_RAZER", "nvfp4-razer"), ("fp8_e4m3", "FP8_E4M3", "fp8-e4m3"),
    ("int8", "INT8", "int8"),
)
BUILTIN_NAMES: tuple[str, ...] = tuple(name for _, _, name in _BUILTIN)


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
        _unknown(name, list(_REGISTRY))
    return fmt


def check_name(name: str) -> None:
    """`get(name)`'s error for a name no format has, without loading the formats (no torch)."""
    known = list(dict.fromkeys(BUILTIN_NAMES + tuple(_REGISTRY)))
    if name not in known:
        _unknown(name, known)


def _unknown(name: str, known: list[str]) -> None:
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f", did you mean '{close[0]}'?" if close else ""
    raise QCompilerError(f"unknown format '{name}'; known formats: {', '.join(known)}{hint}")


def names() -> list[str]:
    """Registered format names, built-ins first in a fixed order."""
    _load()
    return list(_REGISTRY)


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for module, attr, name in _BUILTIN:
        fmt = getattr(importlib.import_module(f"qcompiler.formats.{module}"), attr)
        if fmt.name != name:
            raise ValueError(f"qcompiler.formats.{module}.{attr} is named {fmt.name!r}, "
                             f"_BUILTIN says {name!r}")
        register(fmt)


def __getattr__(name: str) -> Any:
    """`Format` and `QTensor` on first use: their module imports torch."""
    if name in ("Format", "QTensor"):
        from qcompiler.formats import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BUILTIN_NAMES", "Format", "QTensor", "check_name", "get", "names", "register"]

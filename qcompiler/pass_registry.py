"""The pass registry: pass name -> Pass class.

Lazy, as in xDSL: nothing under `qcompiler.passes` is imported until a pass is looked up, so
`import qcompiler` stays fast and a CLI that only prints `--help` never loads torch-heavy passes.
On first use every module of the package is imported (found with pkgutil, so adding a pass is
adding a file); each registers itself with `@register_pass`.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import re
import threading
from typing import TypeVar

from qcompiler.errors import UsageError
from qcompiler.passes_base import Pass

P = TypeVar("P", bound=type[Pass])

_REGISTRY: dict[str, type[Pass]] = {}
_IMPORT_ERRORS: dict[str, str] = {}
_loaded = False
_loading = False
_lock = threading.RLock()
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def register_pass(cls: P) -> P:
    """Class decorator: make `cls` available under `cls.name` in pipelines."""
    name = getattr(cls, "name", "")
    if not _NAME.match(name or ""):
        raise TypeError(f"{cls.__qualname__}.name must be kebab-case, got {name!r}")
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise TypeError(f"{cls.__qualname__} must be a @dataclass(frozen=True)")
    if not cls.description():
        raise TypeError(f"{cls.__qualname__} needs a docstring (its first line is the description)")
    other = _REGISTRY.get(name)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise TypeError(
            f"pass name {name!r} registered twice: {other.__module__}, {cls.__module__}")
    _REGISTRY[name] = cls
    return cls


def _load() -> None:
    """Import every module of `qcompiler.passes` once; remember the ones that fail."""
    global _loaded, _loading
    if _loaded:
        return
    with _lock:
        if _loaded or _loading:  # _loading: a pass module looked up passes while being imported
            return
        _loading = True
        try:
            package = importlib.import_module("qcompiler.passes")
            for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
                module = f"qcompiler.passes.{info.name}"
                try:
                    importlib.import_module(module)
                except Exception as e:  # one broken pass must not hide all the others
                    _IMPORT_ERRORS[module] = f"{type(e).__name__}: {e}"
            _loaded = True
        finally:
            _loading = False


def all_passes() -> dict[str, type[Pass]]:
    """Every registered pass by name, sorted by name."""
    _load()
    return dict(sorted(_REGISTRY.items()))


def import_errors() -> dict[str, str]:
    """Pass modules that failed to import (module -> error); empty in a healthy tree."""
    _load()
    return dict(_IMPORT_ERRORS)


def has_pass(name: str) -> bool:
    _load()
    return name in _REGISTRY


def get_pass(name: str) -> type[Pass]:
    """The pass class called `name`; UsageError with the nearest name when there is none."""
    _load()
    cls = _REGISTRY.get(name)
    if cls is None:
        raise UsageError(unknown_pass_message(name, list(_REGISTRY)))
    return cls


def unknown_pass_message(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean '{close[0]}'?" if close else "see 'qc-opt --list-passes'"
    message = f"unknown pass '{name}'; {hint}"
    broken = [m for m in _IMPORT_ERRORS if m.rsplit(".", 1)[-1] == name.replace("-", "_")]
    if broken:
        message += f" ({broken[0]} failed to import: {_IMPORT_ERRORS[broken[0]]})"
    return message

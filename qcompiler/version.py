"""The package version, in a module of its own so that low layers (artifact manifests, emitted
kernels) can read it without importing `qcompiler/__init__.py`, which imports the whole API."""

from __future__ import annotations

__version__ = "0.1.0"

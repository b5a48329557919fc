"""The package version, in a module of its own so that low layers (artifact manifests, emitted
kernels) can read it without importing `qcompiler/__init__.py`, the public API facade that
nothing inside the project imports (docs/CONTRACTS.md, layers)."""

from __future__ import annotations

__version__ = "0.1.0"

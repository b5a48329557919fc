"""Bench scripts run as `python bench/X.py`, which puts bench/ first on sys.path, and some tests
import them the same way: a bench module named like an installed package's top-level module
(transformers >= 5.25 needs the `kernels` package; bench/kernels.py once hid it and broke every
model import) shadows that package. No bench module may take such a name."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_no_bench_module_shadows_an_installed_package():
    installed = set(importlib.metadata.packages_distributions())
    stems = {p.stem for p in BENCH.glob("*.py")}
    assert stems, "bench/ has no scripts?"
    assert not stems & installed, f"rename these bench scripts: {sorted(stems & installed)}"

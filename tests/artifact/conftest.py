"""Artifacts shared by the artifact/runtime/eval tests (compiled once per test process)."""

from __future__ import annotations

import pytest

import qcompiler


@pytest.fixture(scope="session")
def llama_razer4(tmp_path_factory):
    """(artifact path, CompileResult) for zoo:llama-tiny compiled to razer4."""
    out = tmp_path_factory.mktemp("artifacts") / "llama-razer4"
    result = qcompiler.compile("zoo:llama-tiny", format="razer4", out=out, quiet=True)
    return out, result

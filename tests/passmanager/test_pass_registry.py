"""The registry: names match, every pass is documented and lives in passes/<name>.py."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path

import pytest

from qcompiler.errors import UsageError
from qcompiler.pass_registry import all_passes, get_pass, import_errors, register_pass
from qcompiler.passes_base import Pass

PASSES_DIR = Path(__file__).resolve().parents[2] / "passes"


def test_every_pass_module_imports():
    assert import_errors() == {}


def test_core_passes_are_registered():
    assert {"canonicalize", "dce", "quantize-report"} <= set(all_passes())


@pytest.mark.parametrize("key", sorted(all_passes()))
def test_registered_pass_is_well_formed(key):
    cls = all_passes()[key]
    assert cls.name == key
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    doc = (cls.__doc__ or "").strip()
    assert doc and "\n" not in doc, f"{key}: the docstring must be one line"
    assert len(doc) <= 100
    module_file = Path(inspect.getfile(cls)).resolve()
    assert module_file == PASSES_DIR / f"{key.replace('-', '_')}.py"
    cls.options()  # every option type resolves
    assert get_pass(key) is cls


def test_get_pass_unknown():
    with pytest.raises(UsageError, match=r"^unknown pass 'quantise-report'; did you mean "
                                         r"'quantize-report'\?$"):
        get_pass("quantise-report")


def test_register_pass_rejects_malformed_classes(monkeypatch):
    from qcompiler import pass_registry

    monkeypatch.setattr(pass_registry, "_REGISTRY", dict(pass_registry._REGISTRY))
    with pytest.raises(TypeError, match="kebab-case"):
        @register_pass
        @dataclass(frozen=True)
        class Bad(Pass):
            """Doc."""

            name = "Bad_Name"

    with pytest.raises(TypeError, match="frozen"):
        @register_pass
        @dataclass
        class Mutable(Pass):  # type: ignore[misc]
            """Doc."""

            name = "mutable"

    with pytest.raises(TypeError, match="docstring"):
        @register_pass
        @dataclass(frozen=True)
        class NoDoc(Pass):
            name = "no-doc"

"""Source check: user files are unpickled only through the guarded paths.

`torch.export.load` must go through `qcompiler.safe_archive` (which pins `torch.load` to
`weights_only=True`), and full unpickling happens only in the `--trust-pickle` branch of capture.
A new call elsewhere would silently reopen the hole this test guards."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {
    "torch.export.load(": {"qcompiler/safe_archive.py"},
    "weights_only=False": {"qcompiler/capture.py"},  # _capture_pickle, behind --trust-pickle
    # any torch.load at all: caches and results are written as safetensors/JSON instead
    "torch.load(": {"qcompiler/capture.py"},
}


def test_unsafe_loads_only_in_guarded_modules():
    found: dict[str, set[str]] = {key: set() for key in ALLOWED}
    for folder in ("qcompiler", "passes", "codegen", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            code = re.sub(r'"""[\s\S]*?"""', "", text)  # docstrings may mention the calls
            for key in ALLOWED:
                if key in code:
                    found[key].add(path.relative_to(ROOT).as_posix())
    for key, files in found.items():
        assert files <= ALLOWED[key], (key, sorted(files - ALLOWED[key]))
    assert found["torch.export.load("] == ALLOWED["torch.export.load("]


def test_pickle_branch_is_behind_trust_pickle():
    source = (ROOT / "qcompiler/capture.py").read_text()
    branch = source[source.index("if _looks_like_pickle(path):"):]
    assert branch.index("if not trust_pickle:") < branch.index("_capture_pickle(")

#!/usr/bin/env bash
# Builds the wheel, installs it into a fresh venv (no editable install, no source tree on the
# path) and runs the CLI from that install: catches packaging mistakes such as a sub-package or
# data file left out of the wheel, which an editable install would hide.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
.venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" .
$PYTHON -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --upgrade pip
"$WORK/venv/bin/python" -m pip install -q "torch==2.13.*"
"$WORK/venv/bin/python" -m pip install -q "$WORK"/dist/qcompiler-*.whl
cd "$WORK"  # away from the checkout: only the installed package can be imported
"$WORK/venv/bin/qcompile" formats > formats.txt
grep -q razer4 formats.txt
"$WORK/venv/bin/qcompile" zoo:llama-tiny --format razer4 -o out -q
"$WORK/venv/bin/python" - <<'PY'
import qcompiler, torch
assert "site-packages" in qcompiler.__file__, qcompiler.__file__
model = qcompiler.load("out")
logits = model(torch.tensor([[1, 2, 3]]))
assert logits.shape[-1] > 0 and torch.isfinite(logits).all()
from qcompiler.formats import razer_check
from qcompiler.formats.native import build
# the C source ships in the wheel and passes its self-check wherever there is a compiler
assert build.compiler() is None or razer_check.checked_lib() is not None, "C RaZeR loop unusable"
print("wheel check: ok,", qcompiler.__file__)
PY

# lit configuration: `lit lit_tests` (make test runs it).
# Substitutions: %PYTHON, qcompile, qc-opt, FileCheck (the Python `filecheck` package),
# and %not (inverts an exit code, for error tests). Feature `gpu` when CUDA is usable;
# a folder needing it says `config.unsupported = "gpu" not in config.available_features`.
import glob
import os
import shutil
import subprocess
import sys

import lit.formats

config.name = "qcompiler"
config.test_format = lit.formats.ShTest(execute_external=False)
config.suffixes = [".py", ".test"]
config.excludes = ["lit.cfg.py", "lit.local.cfg", "Inputs", "conftest.py"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.test_source_root, "Output")

python = sys.executable
bindir = os.path.dirname(python)


def tool(name):
    path = shutil.which(name, path=bindir) or shutil.which(name)
    if path is None:
        lit_config.fatal(f"{name} not found; run `make venv` first")
    return path


config.substitutions.append(("%PYTHON", python))
# Run not_.py as a script: `-m qcompiler.testing.not_` would import the qcompiler package and
# with it torch (seconds of CPU per error test) just to invert an exit code.
repo_root = os.path.dirname(config.test_source_root)
not_script = os.path.join(repo_root, "qcompiler", "testing", "not_.py")
config.substitutions.append(("%not", f"{python} {not_script}"))
config.substitutions.append(("qcompile ", tool("qcompile") + " "))
config.substitutions.append(("qc-opt ", tool("qc-opt") + " "))
config.substitutions.append(("FileCheck", tool("filecheck")))

for var in ("HOME", "PATH", "TMPDIR", "HF_HOME"):
    if var in os.environ:
        config.environment[var] = os.environ[var]
config.environment["HF_HUB_OFFLINE"] = "1"
config.environment["PYTHONWARNINGS"] = "ignore"
config.environment["TRITON_INTERPRET"] = "1"
# lit already runs one test per core: torch's intra-op threads (one per core by default) would
# only oversubscribe the machine, and their spinning costs CPU time (the inputs are tiny).
config.environment["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")

# Without an NVIDIA device node there is no CUDA: skip the torch import (seconds, before any test).
has_gpu = False
try:
    has_gpu = bool(glob.glob("/dev/nvidia[0-9]*")) and subprocess.run(
        [python, "-c", "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"],
        capture_output=True, timeout=120,
    ).returncode == 0
except Exception:
    has_gpu = False
if has_gpu:
    config.available_features.add("gpu")

"""Compiling one of this package's C files into a shared library, once per machine, with ctypes.

Why: a few format searches are hundreds of small tensor ops per block in torch and one tight
loop in C (razer_search.c). The C files use no headers beyond libc and take raw float pointers,
so building one takes the system C compiler well under a second: no Python or torch headers, no
build step at install time, nothing to do on a machine without a compiler (the torch path runs
there, with the same bytes).

The library is cached under ~/.cache/qcompiler/native (or $QCOMPILER_CACHE_DIR/native, as the
zoo's cache; a temporary directory when that is "off"), named by a
hash of the source, the flags, the compiler's version and this CPU's feature flags (it is
built with -march=native), written to a temporary name and renamed, so concurrent processes
never load a half-written file. Flags that keep float32 arithmetic bit-identical to torch's:
-ffp-contract=off (no fused multiply-add) and no -ffast-math (no reassociation).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).resolve().parent
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared",
         "-std=c11")
TIMEOUT_S = 120


def cache_dir() -> Path:
    root = os.environ.get("QCOMPILER_CACHE_DIR")
    if root == "off":
        return Path(tempfile.gettempdir()) / f"qcompiler-native-{os.getuid()}"
    return (Path(root) if root else Path.home() / ".cache" / "qcompiler") / "native"


def compiler() -> str | None:
    """The C compiler to use: $CC, else cc, gcc or clang on PATH; None when there is none."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler_version(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout
    except (OSError, subprocess.SubprocessError):
        return ""


@lru_cache(maxsize=None)
def load(source: str) -> ctypes.CDLL | None:
    """The shared library built from SOURCE_DIR/source, or None (no compiler, the build failed,
    or QC_NATIVE=0): callers then take their torch path."""
    if os.environ.get("QC_NATIVE", "1") == "0":
        return None
    cc = compiler()
    if cc is None:
        log.info("no C compiler on PATH: native %s not built, using the torch path", source)
        return None
    src = SOURCE_DIR / source
    key = hashlib.sha256()
    for part in (src.read_bytes(), " ".join(FLAGS).encode(), _compiler_version(cc).encode(),
                 _cpu_flags().encode(), platform.machine().encode()):
        key.update(part)
        key.update(b"\0")
    target = cache_dir() / f"{src.stem}-{key.hexdigest()[:16]}.so"
    if not target.exists() and not _build(cc, src, target):
        return None
    try:
        return ctypes.CDLL(str(target))
    except OSError as exc:
        log.warning("could not load %s (%s): using the torch path", target, exc)
        return None


def _build(cc: str, src: Path, target: Path) -> bool:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        log.warning("cannot write %s (%s): using the torch path", target.parent, exc)
        return False
    try:
        proc = subprocess.run([cc, *FLAGS, "-o", tmp, str(src), "-lm"], capture_output=True,
                              text=True, timeout=TIMEOUT_S)
        if proc.returncode != 0:
            log.warning("%s failed to build %s: %s; using the torch path", cc, src.name,
                        proc.stderr.strip().splitlines()[-1:] or proc.returncode)
            return False
        os.replace(tmp, target)
        return True
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("%s failed to build %s (%s): using the torch path", cc, src.name, exc)
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

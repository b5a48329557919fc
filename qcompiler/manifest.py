"""The artifact's manifest: its file name, versions, and the integrity record of its files.

`qcompiler.artifact` writes artifacts and `qcompiler.runtime` loads them; the kernel tuner
(`qcompiler.codegen.runtime`) adds a file to an existing artifact after the compile. All three
read or update the manifest through this module, which needs nothing but the standard library
and the error type, so the code generator does not import the artifact writer (and with it
the capture and pass stack) just to record a file's hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from qcompiler.errors import QCompilerError

ARTIFACT_VERSION = 3  # 2: mandatory tensor table; 3: tensors stored narrower than loaded
READABLE_VERSIONS = (2, 3)  # a version-2 artifact is a version 3 with no narrowed tensor
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20
BUILD = "build.json"  # run-dependent facts: not hashed, not part of the byte-identical set


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory` except the manifest and build.json (which
    differs between runs of the same compile), by relative path."""
    out = {}
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory).as_posix()
        if p.is_file() and rel not in (MANIFEST, BUILD):
            out[rel] = "sha256:" + sha256_file(p)
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the artifact at `path`; a one-line error when it is not one."""
    directory = Path(path)
    if not directory.exists():
        raise QCompilerError(f"no such artifact: {directory}")
    file = directory / MANIFEST
    if not directory.is_dir() or not file.is_file():
        raise QCompilerError(f"{directory} is not a qcompiler artifact (no {MANIFEST}); "
                             "create one with 'qcompile MODEL --format F -o OUT'")
    if file.is_symlink() or file.stat().st_size > MAX_MANIFEST_BYTES:
        raise QCompilerError(f"{file} is not a regular manifest (a symbolic link, or over "
                             f"{MAX_MANIFEST_BYTES >> 20} MiB); recompile the artifact")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise QCompilerError(f"{file} is unreadable: {e}; recompile the artifact") from None
    if not isinstance(manifest, dict):
        raise QCompilerError(f"{file} is not a manifest (not a JSON object); recompile the "
                             "artifact")
    version = manifest.get("artifact_version")
    if version not in READABLE_VERSIONS:
        raise QCompilerError(f"{directory} has artifact version {version}, this qcompiler reads "
                             f"{ARTIFACT_VERSION}; recompile it")
    return manifest


def record_file(directory: Path, name: str) -> None:
    """Add (or refresh) `name`'s hash in the integrity record of the artifact at `directory`:
    for a file written after the compile on purpose (tuned kernel configs), which `load` would
    otherwise refuse as unrecorded. The manifest is replaced atomically."""
    manifest = read_manifest(directory)
    manifest.setdefault("files", {})[name] = "sha256:" + sha256_file(directory / name)
    tmp = directory / f".{MANIFEST}.tmp"
    write_json(tmp, manifest)
    os.replace(tmp, directory / MANIFEST)


def is_artifact(directory: Path) -> bool:
    """Whether `directory` holds a manifest written by qcompiler (any artifact version)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(manifest, dict) and "artifact_version" in manifest and "format" in manifest


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, sort_keys=True, indent=1) + "\n")

"""Verifying an artifact before anything in it is used.

An artifact directory may come from someone else, so `qcompiler.load` trusts nothing in it until
these checks pass, in this order (each failure is one line that says to recompile):

1. The manifest's integrity record (`files`: relative name -> sha256) is present and complete:
   it names program.pt2, weights.safetensors and report.json, and every file in the directory
   except manifest.json and build.json. build.json holds run-dependent facts (dates, timings)
   and is deliberately outside the record so that two compiles stay byte-identical; it is only
   ever displayed, never used to load anything.
2. Every recorded name is checked *before any file is opened*: relative, no `..`, no backslash
   or NUL, no symlink on the way, so a manifest cannot point at /etc/hostname.
3. Every file is hashed against its record (`verify=False` skips only this step).
4. The manifest's tensor table (`tensors`: name -> dtype and shape) is compared with the header of
   weights.safetensors, parsed here by hand with a size cap, and the header's offsets must tile
   the file exactly; so a huge or lying shape is refused before one byte is allocated.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path, PurePosixPath
from typing import Any

from qcompiler.errors import QCompilerError

MANIFEST, BUILD = "manifest.json", "build.json"
REQUIRED = ("program.pt2", "weights.safetensors", "report.json")
# stored dtype -> the dtypes `load` may widen it to (manifest `load_as`): exact widenings only
WIDENS = {"BF16": ("F32",), "F16": ("F32",)}
MAX_HEADER_BYTES = 100 << 20  # a safetensors header larger than this is not ours
ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
              "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def verify_artifact(directory: Path, manifest: dict[str, Any], *, verify: bool = True) -> None:
    """Steps 1-4 of the module docstring; raises QCompilerError naming the first problem."""
    from qcompiler.artifact import sha256_file

    record = manifest.get("files")
    if not isinstance(record, dict) or not record:
        raise _bad(directory, "manifest.json has no integrity record ('files')")
    for name in record:
        check_member_name(directory, name)
    for name in REQUIRED:
        if name not in record:
            raise _bad(directory, f"the integrity record does not cover {name}")
    present = _files_on_disk(directory)
    for name in sorted(present - set(record) - {MANIFEST, BUILD}):
        raise _bad(directory, f"{name} is not in the integrity record")
    for name in sorted(set(record) - present):
        raise QCompilerError(f"artifact {directory} is incomplete: {name} is missing; "
                             "recompile it")
    if verify:
        for name, digest in sorted(record.items()):
            if not isinstance(digest, str) or "sha256:" + sha256_file(directory / name) != digest:
                raise QCompilerError(f"artifact {directory} is corrupted: {name} does not match "
                                     "its hash in manifest.json; recompile it")
    check_tensor_table(directory, manifest)


def check_member_name(directory: Path, name: Any) -> Path:
    """The path of artifact member `name`, refused unless it stays inside `directory`."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        raise _bad(directory, f"invalid file name {name!r} in manifest.json")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or name != pure.as_posix():
        raise _bad(directory, f"file name {name!r} in manifest.json leaves the artifact")
    path = directory
    for part in pure.parts:
        path = path / part
        if path.is_symlink():
            raise _bad(directory, f"{pure} is a symbolic link; artifacts hold plain files")
    return path


def _files_on_disk(directory: Path) -> set[str]:
    out = set()
    for root, dirs, files in os.walk(directory):  # does not follow directory symlinks
        for entry in dirs + files:
            path = Path(root) / entry
            if path.is_symlink():
                raise _bad(directory, f"{path.relative_to(directory).as_posix()} is a symbolic "
                                      "link; artifacts hold plain files")
        out.update((Path(root) / f).relative_to(directory).as_posix() for f in files)
    return out


def check_tensor_table(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Compare the manifest's tensor table with the weights file's header; returns the table."""
    table = manifest.get("tensors")
    if not isinstance(table, dict):
        raise _bad(directory, "manifest.json has no tensor table ('tensors')")
    header = read_safetensors_header(directory / "weights.safetensors")
    if set(header) != set(table):
        extra = sorted(set(header) ^ set(table))
        raise _bad(directory, f"tensor {extra[0]} is in only one of manifest.json and "
                              "weights.safetensors")
    for name, entry in table.items():
        if not _entry_matches(entry, header[name]):
            raise _bad(directory, f"tensor {name}: manifest.json says {entry}, "
                                  f"weights.safetensors says {header[name]['dtype']} "
                                  f"{header[name]['shape']}")
    return table


def _entry_matches(entry: Any, header_entry: dict[str, Any]) -> bool:
    """A table entry names the header's dtype and shape, plus at most an exact widening."""
    if not isinstance(entry, dict):
        return False
    stored = {k: v for k, v in entry.items() if k != "load_as"}
    if stored != {"dtype": header_entry["dtype"], "shape": header_entry["shape"]}:
        return False
    return "load_as" not in entry or entry["load_as"] in WIDENS.get(entry["dtype"], ())


def read_safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """The tensor entries of a safetensors header, after checking that their dtypes, shapes and
    offsets describe exactly the bytes of the file (nothing is allocated for the tensors)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise _bad(path.parent, f"{path.name} is truncated")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise _bad(path.parent, f"{path.name} has a header of {length} bytes in a file of "
                                    f"{size}")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _bad(path.parent, f"{path.name} has an unreadable header") from None
    if not isinstance(header, dict):
        raise _bad(path.parent, f"{path.name} has an unreadable header")
    header.pop("__metadata__", None)
    spans = []
    for name, entry in header.items():
        spans.append((*_entry_span(path, name, entry), name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise _bad(path.parent, f"{path.name}: tensor {name} does not start where the "
                                    "previous one ends")
        end = stop
    if end != size - 8 - length:
        raise _bad(path.parent, f"{path.name} holds {size - 8 - length} data bytes, its header "
                                f"describes {end}")
    return header


def _entry_span(path: Path, name: str, entry: Any) -> tuple[int, int]:
    ok = (isinstance(entry, dict) and entry.get("dtype") in ITEM_BYTES
          and isinstance(entry.get("shape"), list)
          and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                  for d in entry["shape"])
          and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
          and all(isinstance(o, int) and o >= 0 for o in entry["data_offsets"]))
    if not ok:
        raise _bad(path.parent, f"{path.name}: malformed header entry for tensor {name}")
    begin, stop = entry["data_offsets"]
    nbytes = math.prod(entry["shape"]) * ITEM_BYTES[entry["dtype"]]
    if stop - begin != nbytes:
        raise _bad(path.parent, f"{path.name}: tensor {name} of shape {entry['shape']} needs "
                                f"{nbytes} bytes, its data holds {stop - begin}")
    return begin, stop


def _bad(directory: Path, what: str) -> QCompilerError:
    return QCompilerError(f"artifact {directory} is not trustworthy: {what}; recompile it")


def check_kernels(directory: Path, program: Any) -> None:
    """The artifact's generated kernels are Python files that the CUDA runtime imports, so they
    would run code: each must equal, byte for byte, what this qcompiler emits for the layer
    specs of the (already verified) program; anything else there is refused. Emission is
    deterministic and takes milliseconds per shape. `autotune.json` is data (tuned launch
    configurations, validated when read) and may be rewritten by tuning."""
    import tempfile

    kernels = directory / "kernels"
    if not kernels.is_dir():
        return
    try:
        from qcompiler.codegen.emit import emit_all
    except ImportError:  # no codegen installed: the kernels are never imported either
        return
    from qcompiler.artifact import kernel_specs

    with tempfile.TemporaryDirectory(prefix="qc-kernels-") as tmp:
        fresh = Path(tmp)
        specs = kernel_specs(program)
        if specs:
            emit_all(specs, fresh)
        ours = {p.relative_to(fresh).as_posix() for p in fresh.rglob("*") if p.is_file()}
        theirs = {p.relative_to(kernels).as_posix() for p in kernels.rglob("*") if p.is_file()}
        for name in sorted((theirs - {"autotune.json"}) ^ ours):
            raise _bad(directory, f"kernels/{name} is not what this qcompiler generates for "
                                  "the artifact's layers")
        for name in sorted(ours):
            if (kernels / name).read_bytes() != (fresh / name).read_bytes():
                raise _bad(directory, f"kernels/{name} differs from what this qcompiler "
                                      "generates for its layer (another version, or edited)")

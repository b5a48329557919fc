"""Helpers that forge hostile inputs the way an attacker would: valid zips with a payload inside,
artifacts whose manifest was rehashed after the change so that only deeper checks can catch it."""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
from pathlib import Path

import torch

from qcompiler.artifact import sha256_file


class CreatesFile:
    """Unpickling this calls open(path, "w"): the file appearing proves that code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def evil_pickle(marker: Path) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(CreatesFile(marker), buffer)
    return buffer.getvalue()


def replace_member(archive: Path, suffix: str, data: bytes) -> str:
    """Rewrite the zip at `archive` with the member ending in `suffix` replaced by `data` (CRCs
    recomputed, so the zip itself is valid); returns the member's name."""
    with zipfile.ZipFile(archive) as z:
        members = [(info, z.read(info.filename)) for info in z.infolist()]
    target = next(info.filename for info, _ in members if info.filename.endswith(suffix))
    archive.unlink()
    with zipfile.ZipFile(archive, "w") as z:
        for info, body in members:
            z.writestr(info, data if info.filename == target else body)
    return target


def add_member(archive: Path, name: str, data: bytes) -> None:
    prefix = zipfile.ZipFile(archive).namelist()[0].split("/")[0]
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr(f"{prefix}/{name}", data)


def flip_stored_byte(archive: Path, suffix: str) -> None:
    """Flip one byte inside a stored (uncompressed) member, leaving its recorded CRC stale."""
    with zipfile.ZipFile(archive) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(suffix))
    assert info.compress_type == zipfile.ZIP_STORED and info.file_size > 0
    raw = bytearray(archive.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    data_start = info.header_offset + 30 + name_len + extra_len
    raw[data_start + info.file_size // 2] ^= 0x5A
    archive.write_bytes(bytes(raw))


def copy_artifact(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def write_manifest(out: Path, data: dict) -> None:
    (out / "manifest.json").write_text(json.dumps(data, sort_keys=True, indent=1) + "\n")


def rehash(out: Path) -> None:
    """Recompute the integrity record of every file it names, as an attacker can."""
    data = manifest(out)
    data["files"] = {name: "sha256:" + sha256_file(out / name) for name in data["files"]}
    write_manifest(out, data)


def rewrite_weights_header(out: Path, name: str, **changes) -> None:
    """Change one tensor's header entry in weights.safetensors (data bytes untouched)."""
    path = out / "weights.safetensors"
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    header[name].update(changes)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length:])

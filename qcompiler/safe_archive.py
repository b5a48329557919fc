"""Reading `torch.export` archives without running code from them.

`torch.export.load` is not safe on a file from someone else, for three reasons this module closes:
- it unpickles members (sample inputs, constants, some weights) and, when the safe
  `weights_only=True` unpickler refuses one, retries with `weights_only=False`, which runs
  whatever the pickle says *before* any error is raised;
- a `.pt2` may carry AOTInductor members (`data/aotinductor/...`), shared libraries that the
  loader `dlopen`s;
- it never checks the zip's CRCs, so flipped bytes in a stored member load as garbage weights.

`read_export_archive` therefore (1) tests every member's CRC first, (2) refuses native-code
members, and (3) runs `torch.export.load` with `torch.load` pinned to `weights_only=True`, so the
fallback cannot unpickle arbitrary objects: an archive that needs it is rejected with a one-line
error naming `--trust-pickle`. With `trust_pickle=True` step (3) is skipped (the user vouched for
the file); steps (1) and (2) always run.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from qcompiler.errors import CaptureError

NATIVE_CODE_DIR = "aotinductor/"  # under the archive's data/ folder: compiled .so/.cpp members
_PATCH_LOCK = threading.Lock()


class PickleRefused(BaseException):
    """torch.load was asked to unpickle more than plain tensors and containers.

    A BaseException on purpose: torch's loaders wrap their loads in `except Exception` (that is
    where the unsafe fallback lives), and this refusal must not be swallowed by them."""


def check_zip(path: Path) -> list[str]:
    """Member names of the zip at `path` after checking every member's CRC; one-line errors."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
            names = z.namelist()
    except Exception as e:  # BadZipFile, OSError, zlib.error on a damaged deflate stream, ...
        raise CaptureError(f"{path} is corrupted ({type(e).__name__}: {e}); "
                           "re-export or re-download it") from None
    if bad is not None:
        raise CaptureError(f"{path} is corrupted: member {bad} fails its CRC check; "
                           "re-export or re-download it")
    return names


def read_export_archive(path: Path, extra_files: dict[str, Any], *,
                        trust_pickle: bool = False) -> torch.export.ExportedProgram:
    """`torch.export.load(path)` after the checks above; CaptureError on any refusal."""
    names = check_zip(path)
    native = [n for n in names if f"/data/{NATIVE_CODE_DIR}" in f"/{n}"]
    if native:
        raise CaptureError(f"{path} contains compiled native code ({native[0]}); qcompiler "
                           "reads only exported programs: save it with torch.export.save")
    guard = contextlib.nullcontext() if trust_pickle else weights_only_unpickling()
    try:
        with guard:
            return torch.export.load(str(path), extra_files=extra_files)
    except PickleRefused as e:
        raise CaptureError(f"{path} holds pickled objects that are not plain tensors ({e}); "
                           "loading them runs code from the file. Re-run with --trust-pickle "
                           "if you trust it") from None


@contextlib.contextmanager
def weights_only_unpickling() -> Iterator[None]:
    """Within the block, every `torch.load` uses the restricted unpickler; a load that the
    restricted unpickler refuses raises PickleRefused instead of falling back to full pickle."""
    original = torch.load

    @functools.wraps(original)
    def restricted(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        if args:  # map_location is the only positional after f; keep it, drop pickle_module
            args = args[:1]
        kwargs.pop("pickle_module", None)
        try:
            return original(f, *args, **kwargs)
        except Exception as e:
            raise PickleRefused(_first_line(e)) from None

    with _PATCH_LOCK:
        torch.load = restricted
        try:
            yield
        finally:
            torch.load = original


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]

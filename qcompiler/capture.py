"""Capture: turn what a user points us at into a `Program`.

Accepted sources, tried in this order:
- an `nn.Module` (with `example_inputs`), or an HF `PreTrainedModel`;
- `zoo:NAME`, a bundled tiny model (see `qcompiler.zoo`);
- `FILE.qcir`, our textual IR (see `qcompiler.ir`);
- a Hugging Face model directory (config.json + safetensors), loaded offline;
- a `torch.export` archive (`.pt2` or any extension: we sniff the zip);
- a pickled `nn.Module` written with `torch.save`, only with `trust_pickle=True`, because
  unpickling runs arbitrary code.

This module only dispatches; the work is in `qcompiler.torch_capture` (non-strict
`torch.export` of modules and HF models, normalized to the unlifted form `Program` documents),
`qcompiler.export_archive` (.pt2 files), `qcompiler.zoo` and `qcompiler.ir.io`. It imports them,
and torch, only when a source needs them: `import qcompiler` (which binds `capture`) stays cheap,
so a command that stops at a usage error never pays for torch.

The names that used to live here (`capture_module`, `save_exported`, ...) are still importable
from this module.
"""

from __future__ import annotations

import importlib
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from qcompiler.errors import CaptureError, first_line

if TYPE_CHECKING:
    import torch

    from qcompiler.program import Program

# Public names of the modules capture was split into, importable from here as before.
MOVED = {
    "torch_capture": ("DEFAULT_SEQ_LEN", "MAX_BATCH", "EXAMPLE_BATCH", "DECODER_TYPES",
                      "CausalLM", "Encoder", "hf_kind", "capture_hf_dir", "capture_hf_model",
                      "capture_module", "export_module", "normalize_export"),
    "export_archive": ("EXTRA_FILE", "save_exported", "load_exported", "program_meta",
                       "jsonable", "is_export_archive", "register_custom_ops"),
}
_MOVED_TO = {name: module for module, names in MOVED.items() for name in names}


def __getattr__(name: str) -> Any:
    """`from qcompiler.capture import capture_module` and the like: load the module that has it
    (torch and all) on first use."""
    module = _MOVED_TO.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"qcompiler.{module}"), name)


def capture(
    source: Any,
    example_inputs: Sequence[torch.Tensor] | None = None,
    *,
    trust_pickle: bool = False,
    dynamic_seq: bool = True,
) -> Program:
    """Capture `source` as a Program; raises CaptureError with a one-line fix on bad input."""
    if not isinstance(source, (str, os.PathLike)):
        import torch

        from qcompiler.program import Program

        if isinstance(source, Program):
            return source
        if isinstance(source, torch.nn.Module):
            from qcompiler.torch_capture import capture_module

            return capture_module(source, example_inputs, dynamic_seq=dynamic_seq)
        raise CaptureError(f"cannot capture a {type(source).__name__}; pass a path or a module")
    text = str(source)
    if text.startswith("zoo:"):
        from qcompiler import zoo

        return zoo.load(text[4:])
    if text.endswith(".qcir"):  # our textual IR (+ the tensors file its header names)
        from qcompiler.ir.io import read_ir

        return read_ir(Path(text))
    path = Path(text)
    if not path.exists():
        raise CaptureError(f"no such file or directory: {text}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CaptureError(
                f"{text} is a directory without config.json; point at a Hugging Face model "
                "directory, a .pt2 archive, or a zoo:NAME model"
            )
        from qcompiler.torch_capture import capture_hf_dir

        return capture_hf_dir(path, dynamic_seq=dynamic_seq, trust_pickle=trust_pickle)
    if not os.access(path, os.R_OK):
        raise CaptureError(f"cannot read {text}: permission denied")
    from qcompiler.export_archive import is_export_archive, load_exported

    if is_export_archive(path):
        return load_exported(path, trust_pickle=trust_pickle)
    if _looks_like_pickle(path):
        if not trust_pickle:
            raise CaptureError(
                f"{text} is a pickled model; loading it runs code from the file. "
                "Re-run with --trust-pickle if you trust it"
            )
        return _capture_pickle(path, example_inputs, dynamic_seq=dynamic_seq)
    raise CaptureError(
        f"{text} is not a model: expected a Hugging Face directory, a torch.export .pt2 archive "
        "or a torch.save'd module"
    )


def _capture_pickle(path: Path, example_inputs: Any, *, dynamic_seq: bool) -> Program:
    import torch

    from qcompiler.torch_capture import capture_module

    try:
        obj = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as e:
        raise CaptureError(f"cannot unpickle {path}: {first_line(e)}")
    if not isinstance(obj, torch.nn.Module):
        raise CaptureError(
            f"{path} holds a {type(obj).__name__}, not a module; save the model with "
            "torch.save(model), or export it with torch.export.save"
        )
    return capture_module(obj, example_inputs, dynamic_seq=dynamic_seq, source=str(path))


def _looks_like_pickle(path: Path) -> bool:
    if zipfile.is_zipfile(path):  # torch.save's default zip format
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("data.pkl") for n in z.namelist())
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"  # pickle protocol marker

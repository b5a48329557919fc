"""`torch.export` archives (.pt2): save a Program and read one back, nothing in the file run.

The archive carries our metadata (input names, kind, dynamic dimensions, example-input specs,
`program.meta`) as the extra file `qcompiler.json`, so `load_exported` gives back the Program
that was saved. The artifact's program.pt2, the zoo's capture cache and `capture(PATH.pt2)` all
go through here.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx

from qcompiler.errors import CaptureError, first_line
from qcompiler.program import DynamicDim, Program
from qcompiler.torch_capture import DEFAULT_SEQ_LEN, normalize_export

EXTRA_FILE = "qcompiler.json"  # our metadata inside a .pt2 archive (torch.export extra_files)


def save_exported(program: Program, path: str | os.PathLike) -> None:
    """Save a Program as a torch.export archive that `capture` reads back losslessly."""
    ep = program.export()
    extra = {EXTRA_FILE: json.dumps(program_meta(program), sort_keys=True)}
    torch.export.save(ep, str(path), extra_files=extra)


def load_exported(path: Path, *, trust_pickle: bool = False) -> Program:
    """Read a torch.export archive as a Program. Nothing in the file runs: CRCs are checked,
    native-code members refused, and pickled members unpickled only as plain tensors unless
    `trust_pickle` (see `qcompiler.safe_archive`)."""
    from qcompiler.safe_archive import read_export_archive

    extra = {EXTRA_FILE: ""}
    register_custom_ops()
    try:
        ep = read_export_archive(Path(path), extra, trust_pickle=trust_pickle)
    except CaptureError:
        raise
    except Exception as e:
        raise CaptureError(f"{path} is not a readable torch.export archive: {first_line(e)}")
    info = json.loads(extra[EXTRA_FILE]) if extra[EXTRA_FILE] else {}
    gm = ep.module()
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    names = tuple(info.get("input_names") or [p.name for p in placeholders])
    inputs = _example_inputs_from_placeholders(placeholders, info)
    dims = [DynamicDim(**d) for d in info.get("dynamic_dims", [])]
    if not info:
        dims = _dynamic_dims_from_placeholders(placeholders)
    program = normalize_export(gm, inputs, names, dims, info.get("kind", "module"), str(path), "")
    program.meta.update(info.get("meta", {}))
    return program


def program_meta(program: Program) -> dict[str, Any]:
    return {
        "input_names": list(program.input_names),
        "kind": program.kind,
        "dynamic_dims": [vars(d) for d in program.dynamic_dims],
        "example_inputs": [
            {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
             "high": int(t.max()) + 1 if not t.is_floating_point() and t.numel() else 0}
            for t in program.example_inputs
        ],
        "meta": jsonable(program.meta),
    }


def _example_inputs_from_placeholders(placeholders: list[fx.Node], info: dict) -> tuple:
    specs = info.get("example_inputs")
    g = torch.Generator().manual_seed(0)
    out = []
    for i, p in enumerate(placeholders):
        if specs:
            s = specs[i]
            shape, dtype, high = s["shape"], getattr(torch, s["dtype"]), s["high"]
        else:
            val = p.meta.get("val")
            shape = [d if isinstance(d, int) else DEFAULT_SEQ_LEN for d in val.shape]
            dtype, high = val.dtype, 2
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=g).to(dtype))
        else:
            out.append(torch.randint(0, max(high, 1), shape, generator=g, dtype=dtype))
    return tuple(out)


def _dynamic_dims_from_placeholders(placeholders: list[fx.Node]) -> list[DynamicDim]:
    dims = []
    for i, p in enumerate(placeholders):
        val = p.meta.get("val")
        for d, size in enumerate(getattr(val, "shape", ())):
            if not isinstance(size, int):
                dims.append(DynamicDim(i, d, "seq", 2, 4096))
    return dims


def is_export_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith(("serialized_exported_program.json", "models/model.json"))
                   or "/models/" in n for n in z.namelist())


def register_custom_ops() -> None:
    """Quantized programs reference qc:: ops; importing the op library registers them."""
    try:
        import qcompiler.ops  # noqa: F401
        import qcompiler.act_ops  # noqa: F401  (qc.quantize_act / qc.quantize_kv)
        import qcompiler.hadamard_op  # noqa: F401  (qc.hadamard, from rotate{online-down=true})
    except ImportError:
        pass


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)

"""The tensors beside a `.qcir` file: one safetensors file the IR's header names.

It holds what the text does not: every parameter and buffer by its dotted name (tied weights
once, with an alias list), the example inputs (`input:0`, ...), the weight plans that calibration
passes chose (`plan:LAYER:codes`, ...; qcompiler/weight_plan.py) and, in the safetensors
metadata under "qcompiler", the program's facts as JSON (input names, dynamic dims with their
ranges, kind, source, the JSON-serializable part of `program.meta`, which tensors are
parameters). Safetensors keeps loading free of pickle: a .qcir pair is safe to open.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from qcompiler.errors import QCompilerError

KEY = "qcompiler"
VERSION = 1


def save_tensors(program: Any, path: Path) -> None:
    """Write `program`'s tensors, example inputs, plans and facts to `path` (safetensors)."""
    from safetensors.torch import save_file

    from qcompiler.weight_plan import KEY as PLANS

    out: dict[str, torch.Tensor] = {}
    by_id: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, t in program.tensors().items():
        if id(t) in by_id:
            aliases[name] = by_id[id(t)]
            continue
        by_id[id(t)] = name
        out[name] = t
    parameters = sorted(n for n, _ in program.gm.named_parameters(remove_duplicate=False))
    for i, t in enumerate(program.example_inputs):
        out[f"input:{i}"] = t
    plans: dict[str, Any] = {}
    for layer, record in (program.meta.get(PLANS) or {}).items():
        entry = {k: record[k] for k in ("format", "group_size", "by")}
        qt = record["qtensor"]
        entry.update(shape=list(qt.shape), opts=qt.opts, parts=sorted(qt.tensors()))
        for part, t in qt.tensors().items():
            out[f"plan:{layer}:{part}"] = t
        for role in ("weight", "original"):
            name = by_id.get(id(record[role]))
            if name is None:
                name = f"plan:{layer}:{role}"
                out[name] = record[role]
            entry[role] = name
        plans[layer] = entry
    facts = {
        "version": VERSION, "input_names": list(program.input_names),
        "dynamic_dims": [asdict(d) for d in program.dynamic_dims], "kind": program.kind,
        "source": program.source, "meta": _json_meta(program.meta, skip={PLANS}),
        "parameters": parameters, "aliases": aliases, "plans": plans,
    }
    seen: set[int] = set()
    for name, t in list(out.items()):  # safetensors refuses shared or strided storage
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen or not t.is_contiguous():
            out[name] = t.contiguous().clone()
        seen.add(ptr)
    save_file({k: v.detach().cpu() for k, v in out.items()}, str(path),
              metadata={KEY: json.dumps(facts, sort_keys=True)})


def _json_meta(meta: dict[str, Any], skip: set[str]) -> dict[str, Any]:
    """The keys of `program.meta` that are plain data (runtime handles and tensors stay out)."""
    kept = {}
    for key, value in meta.items():
        if key in skip:
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        kept[key] = value
    return kept


class Loaded:
    """What a tensors file holds, ready for qcompiler/ir/build.py."""

    def __init__(self, tensors: dict[str, torch.Tensor], inputs: dict[int, torch.Tensor],
                 facts: dict[str, Any]):
        self.tensors, self.inputs, self.facts = tensors, inputs, facts

    @property
    def parameters(self) -> set[str]:
        return set(self.facts.get("parameters", []))

    def restore_meta(self, program: Any) -> None:
        """Put the program facts and weight plans back on a built program."""
        from qcompiler.formats.base import QTensor
        from qcompiler.weight_plan import KEY as PLANS
        from qcompiler.weight_plan import WeightPlans

        program.meta.update(self.facts.get("meta", {}))
        owned = program.tensors()
        plans = {}
        for layer, e in self.facts.get("plans", {}).items():
            parts = {p: self.tensors[f"plan:{layer}:{p}"] for p in e["parts"]}
            qt = QTensor.from_tensors(e["format"], tuple(e["shape"]), e["group_size"], parts,
                                      e.get("opts") or {})
            record = {"format": e["format"], "group_size": e["group_size"], "by": e["by"],
                      "qtensor": qt}
            for role in ("weight", "original"):
                record[role] = owned.get(e[role], self.tensors.get(e[role]))
            plans[layer] = record
        if plans:
            program.meta[PLANS] = WeightPlans(plans)


def load_tensors(path: Path) -> Loaded:
    """Read a tensors file written by `save_tensors` (a one-line error if it is not one)."""
    from safetensors import safe_open

    if not path.is_file():
        raise QCompilerError(f"tensors file {path} not found (the IR header names it; keep it "
                             "beside the .qcir file)")
    try:
        with safe_open(str(path), framework="pt") as f:
            facts = json.loads((f.metadata() or {}).get(KEY, "{}"))
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise QCompilerError(f"{path}: not a readable safetensors file: {e}") from None
    if facts.get("version") != VERSION:
        raise QCompilerError(f"{path}: not a qcompiler IR tensors file (no '{KEY}' metadata "
                             f"of version {VERSION})")
    inputs = {int(k.split(":")[1]): v for k, v in raw.items() if k.startswith("input:")}
    tensors = {k: v for k, v in raw.items() if not k.startswith("input:")}
    for alias, name in facts.get("aliases", {}).items():
        tensors[alias] = tensors[name]
    return Loaded(tensors, inputs, facts)

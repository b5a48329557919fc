"""The `Program`: the unit every pass, printer and emitter works on.

A Program is a torch.export-captured graph in *unlifted* form: an `fx.GraphModule` whose
parameters and buffers are `get_attr` nodes named by their original dotted names
(`model.layers.0.mlp.down_proj.weight`), with plain positional placeholders and a tensor (or
tuple of tensors) output. Unlifted form keeps passes simple: adding a packed-weight buffer is
`program.add_tensor(name, t)` plus a `get_attr` node, with no graph-signature bookkeeping.
`Program.export()` gives the `ExportedProgram` for saving or MLIR (lift.py; no re-tracing).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

import torch
import torch.fx as fx

ModelKind = Literal["causal-lm", "encoder", "module"]


@dataclass
class DynamicDim:
    """A dynamic dimension of one input (the sequence length for language models)."""

    input_index: int
    dim: int
    name: str = "seq"
    min: int = 2
    max: int = 4096


@dataclass
class Program:
    """A captured model: graph, weights, example inputs and where it came from."""

    gm: fx.GraphModule
    example_inputs: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    dynamic_dims: list[DynamicDim] = field(default_factory=list)
    kind: ModelKind = "module"
    source: str = ""
    # Free-form facts about the model (HF config dict, tokenizer dir, architecture name).
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def graph(self) -> fx.Graph:
        return self.gm.graph

    # ---- tensors -------------------------------------------------------------------------
    def get_tensor(self, name: str) -> torch.Tensor:
        """The parameter or buffer behind a `get_attr` target."""
        owner, attr = self.owner_of(name)
        return getattr(owner, attr)

    def set_tensor(self, name: str, value: torch.Tensor) -> None:
        """Replace (or create) the tensor `name`, as a buffer unless it already is a parameter."""
        owner, attr = self.owner_of(name, create=True)
        if attr in owner._parameters:
            owner._parameters[attr] = torch.nn.Parameter(value, requires_grad=False)
        else:
            owner._parameters.pop(attr, None)
            owner.register_buffer(attr, value)

    def add_tensor(self, name: str, value: torch.Tensor) -> str:
        """Add a new buffer under a unique name derived from `name`; returns the name used."""
        candidate, i = name, 1
        while self.has_tensor(candidate):
            candidate = f"{name}_{i}"
            i += 1
        self.set_tensor(candidate, value)
        return candidate

    def delete_tensor(self, name: str) -> None:
        owner, attr = self.owner_of(name)
        owner._parameters.pop(attr, None)
        owner._buffers.pop(attr, None)

    def has_tensor(self, name: str) -> bool:
        try:
            owner, attr = self.owner_of(name)
        except AttributeError:
            return False
        return attr in owner._parameters or attr in owner._buffers

    def tensors(self) -> dict[str, torch.Tensor]:
        """All parameters and buffers by dotted name, in a stable order."""
        named = dict(self.gm.named_parameters(remove_duplicate=False))
        named.update(dict(self.gm.named_buffers(remove_duplicate=False)))
        return {k: named[k] for k in sorted(named)}

    def owner_of(self, name: str, create: bool = False) -> tuple[torch.nn.Module, str]:
        """The submodule holding tensor `name` and its attribute name there (`create` adds
        missing submodules on the way)."""
        *path, attr = name.split(".")
        mod: torch.nn.Module = self.gm
        for part in path:
            if not hasattr(mod, part):
                if not create:
                    raise AttributeError(name)
                mod.add_module(part, torch.nn.Module())
            mod = getattr(mod, part)
        return mod, attr

    # ---- graph helpers -------------------------------------------------------------------
    def nodes(self, op: str | None = None, target: Any = None) -> Iterator[fx.Node]:
        for n in self.graph.nodes:
            if op is not None and n.op != op:
                continue
            if target is not None and n.target != target:
                continue
            yield n

    def linears(self) -> Iterator[fx.Node]:
        """`aten.linear` nodes whose weight is a constant (a `get_attr`): the quantizable layers."""
        for n in self.nodes("call_function", torch.ops.aten.linear.default):
            w = n.args[1]
            if isinstance(w, fx.Node) and w.op == "get_attr":
                yield n

    def recompile(self) -> None:
        self.graph.lint()
        self.gm.recompile()

    # ---- running and exporting -----------------------------------------------------------
    def __call__(self, *inputs: torch.Tensor) -> Any:
        with torch.no_grad():
            return self.gm(*inputs)

    def run(self) -> Any:
        """Run on the example inputs."""
        return self(*self.example_inputs)

    def dynamic_shapes(self) -> tuple[dict[int, Any] | None, ...]:
        dims: list[dict[int, Any] | None] = [None] * len(self.example_inputs)
        cache: dict[str, Any] = {}
        for d in self.dynamic_dims:
            if d.name not in cache:
                cache[d.name] = torch.export.Dim(d.name, min=d.min, max=d.max)
            dims[d.input_index] = {**(dims[d.input_index] or {}), d.dim: cache[d.name]}
        return tuple(dims)

    def export(self) -> torch.export.ExportedProgram:
        """The program as a `torch.export.ExportedProgram` (for saving and MLIR import): lifted
        from the annotated graph without tracing (lift.py), or, for a graph lifting cannot
        take, re-exported by `torch.export`."""
        from qcompiler.lift import lift

        lifted = lift(self)
        if lifted is not None:
            return lifted
        return self.reexport()

    def reexport(self) -> torch.export.ExportedProgram:
        """Run `torch.export` on the GraphModule again (traces every node under fake tensors)."""
        with torch.no_grad():
            return torch.export.export(
                self.gm, self.example_inputs, dynamic_shapes=self.dynamic_shapes(), strict=False
            )

    def clone(self) -> Program:
        """A deep copy: passes that want to compare before/after work on a clone."""
        return Program(
            gm=copy.deepcopy(self.gm),
            example_inputs=self.example_inputs,
            input_names=self.input_names,
            dynamic_dims=list(self.dynamic_dims),
            kind=self.kind,
            source=self.source,
            meta=copy.deepcopy(self.meta),
        )

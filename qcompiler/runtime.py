"""Running a compiled artifact: `qcompiler.load(OUT)` and greedy generation.

`load` reads program.pt2 (the graph, with stubbed tensors), puts the tensors of
weights.safetensors back by name and wraps the result in a `LoadedModel`, an `nn.Module`:
`model(input_ids)` returns logits (decoders) or the last hidden state (encoders), `model.to("cuda")`
moves every buffer, and the `qc.linear_*` ops pick their implementation by device: the reference
(dequantize, then matmul) on CPU, the generated Triton kernels of `OUT/kernels` on CUDA when the
codegen package is installed.

Programs have no KV cache (they are whole-sequence functions), so `generate` re-runs the prefix
at every step: fine for the small models this runs on CPU, and exact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from qcompiler import artifact
from qcompiler.errors import QCompilerError
from qcompiler.program import Program


class LoadedModel(torch.nn.Module):
    """A compiled model: a callable module plus its manifest (format, layers, versions)."""

    def __init__(self, program: Program, manifest: dict[str, Any], path: Path | None = None):
        super().__init__()
        self.gm = program.gm
        self.program = program
        self.manifest = manifest
        self.path = path
        self._kernels_loaded = False

    @property
    def kind(self) -> str:
        return self.program.kind

    @property
    def build(self) -> dict[str, Any]:
        """The artifact's build record (date, compile time, peak RSS); {} when it has none."""
        return artifact.read_build(self.path) if self.path is not None else {}

    @property
    def config(self) -> dict[str, Any]:
        return self.program.meta.get("config") or {}

    @property
    def device(self) -> torch.device:
        for t in self.gm.buffers():
            return t.device
        return torch.device("cpu")

    @property
    def max_length(self) -> int:
        dims = self.program.dynamic_dims
        return dims[0].max if dims else self.program.example_inputs[0].shape[-1]

    def to(self, *args: Any, **kwargs: Any) -> LoadedModel:
        """Move the buffers, and the device constants baked into the graph, to a device."""
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        super().to(*args, **kwargs)
        if device is not None:
            retarget_graph(self.gm, device)
        return self

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.is_cuda and not self._kernels_loaded:
            self._load_kernels()
        with torch.no_grad():
            return self.gm(input_ids.to(self.device))

    def _load_kernels(self) -> None:
        self._kernels_loaded = True
        kernels = self.path / artifact.KERNELS if self.path else None
        if kernels is None or not kernels.is_dir():
            return
        try:
            from qcompiler.codegen.runtime import load_kernels
        except ImportError:
            return
        load_kernels(kernels)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 32,
                 eos_token_id: int | None = None) -> torch.Tensor:
        return generate(self, input_ids, max_new_tokens, eos_token_id)

    def tokenizer(self) -> Any:
        """The tokenizer shipped in the artifact, or None."""
        if self.path is None or not (self.path / artifact.TOKENIZER).is_dir():
            return None
        return load_tokenizer(self.path / artifact.TOKENIZER)


def load(path: str | os.PathLike, *, device: str | torch.device | None = None,
         verify: bool = True) -> LoadedModel:
    """Load the artifact at `path`; `verify` checks every file against the manifest's hashes."""
    import qcompiler.ops  # noqa: F401  (registers the qc:: ops before the archive is read)
    from qcompiler.capture import load_exported

    directory = Path(path)
    manifest = artifact.read_manifest(directory)
    for name, digest in manifest.get("files", {}).items():
        file = directory / name
        if not file.is_file():
            raise QCompilerError(f"artifact {directory} is incomplete: {name} is missing; "
                                 "recompile it")
        if verify and "sha256:" + artifact.sha256_file(file) != digest:
            raise QCompilerError(f"artifact {directory} is corrupted: {name} does not match its "
                                 "hash in manifest.json; recompile it")
    program = load_exported(directory / artifact.PROGRAM)
    tensors = artifact.load_safetensors(directory / artifact.WEIGHTS)
    missing = sorted(set(program.tensors()) - set(tensors))
    if missing:
        raise QCompilerError(f"artifact {directory}: weights.safetensors lacks {missing[0]} "
                             f"(and {len(missing) - 1} more); recompile it")
    for name, value in tensors.items():
        program.set_tensor(name, value)
    program.gm.recompile()
    model = LoadedModel(program, manifest, directory).eval()
    return model.to(device) if device is not None else model


def retarget_graph(gm: torch.fx.GraphModule, device: torch.device | str) -> None:
    """Rewrite `device=` arguments of graph ops (arange, zeros, ...) captured as the export
    device, so that a program exported on the CPU runs on `device`."""
    device = torch.device(device)
    changed = False
    for node in gm.graph.nodes:
        if node.op == "call_function" and isinstance(node.kwargs.get("device"), torch.device):
            if node.kwargs["device"] != device:
                node.kwargs = {**node.kwargs, "device": device}
                changed = True
    if changed:
        gm.recompile()


def move_program(program: Program, device: str | torch.device) -> Program:
    """Move a Program's tensors and graph constants to `device` (in place); returns it."""
    device = torch.device(device)
    if device.type != "cpu" or any(t.device != device for t in program.gm.buffers()):
        program.gm.to(device)
        retarget_graph(program.gm, device)
    return program


def generate(model: Any, input_ids: torch.Tensor, max_new_tokens: int = 32,
             eos_token_id: int | None = None) -> torch.Tensor:
    """Greedy decoding with any callable ids -> logits (a LoadedModel or a Program).

    Returns the prompt followed by the generated tokens, shape [1, T + new]; stops early at
    `eos_token_id` (included) or at the model's maximum length.
    """
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    limit = getattr(model, "max_length", None) or _program_max_len(model)
    ids = input_ids
    for _ in range(max_new_tokens):
        if limit and ids.shape[-1] >= limit:
            break
        logits = _logits(model, ids)
        nxt = logits[:, -1].argmax(-1, keepdim=True).to(ids.dtype)
        ids = torch.cat([ids, nxt.to(ids.device)], dim=-1)
        if eos_token_id is not None and int(nxt) == eos_token_id:
            break
    return ids


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)


def _program(model: Any) -> Program | None:
    return model if isinstance(model, Program) else getattr(model, "program", None)


def _program_max_len(model: Any) -> int | None:
    program = _program(model)
    return program.dynamic_dims[0].max if program is not None and program.dynamic_dims else None


def load_tokenizer(directory: Path) -> Any:
    """A transformers tokenizer from local files; None when none can be built."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception:  # no usable tokenizer files: callers fall back to token ids
        return None

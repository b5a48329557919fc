"""Running a compiled artifact: `qcompiler.load(OUT)` and greedy generation.

`load` reads program.pt2 (the graph, with stubbed tensors), puts the tensors of
weights.safetensors back by name and wraps the result in a `LoadedModel`, an `nn.Module`:
`model(input_ids)` returns logits (decoders) or the last hidden state (encoders), `model.to("cuda")`
moves every buffer, and the `qc.linear_*` ops pick their implementation by device: the reference
(dequantize, then matmul) on CPU, the generated Triton kernels of `OUT/kernels` on CUDA when the
codegen package is installed. On the CPU, forward() runs a copy of the graph whose weights are
dequantized once where memory allows (qcompiler/dequantized_linears.py) and whose MoE experts
run on their routed tokens (qcompiler/routed_experts.py); `model.gm` stays the stored graph.

`generate` (qcompiler/generation.py) decodes with a static KV cache through the decode program
(qcompiler/decode_program.py), which `LoadedModel.decoder()` derives from the loaded graph on
first use; models without one (no RoPE) re-run the whole prefix at every step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from qcompiler import artifact
from qcompiler.devices import retarget_graph
from qcompiler.errors import QCompilerError
from qcompiler.hf_tokenizer import load_tokenizer
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
        self._decoders: dict[tuple[str, bool], Any] = {}  # (device, dequantized) -> decoder
        self._eager: list[Any] = []  # [the CPU forward graph], built on first use
        self._dequantized: dict[str, torch.Tensor] = {}  # shared by the CPU graphs
        self._fits: bool | None = None  # whether dequantized weights fit (decided once)

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
        """The longest sequence (prompt + generated tokens) the program accepts."""
        seq = next((d for d in self.program.dynamic_dims if d.name == "seq"), None)
        return seq.max if seq is not None else self.program.example_inputs[0].shape[-1]

    @property
    def max_batch(self) -> int:
        """The largest batch the program accepts (1 for artifacts captured before batch was
        dynamic)."""
        batch = next((d for d in self.program.dynamic_dims if d.name == "batch"), None)
        return batch.max if batch is not None else int(self.program.example_inputs[0].shape[0])

    def to(self, *args: Any, **kwargs: Any) -> LoadedModel:
        """Move the buffers, and the device constants baked into the graph, to a device."""
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        self._eager, self._dequantized, self._fits = [], {}, None  # the CPU graphs' state
        super().to(*args, **kwargs)
        if device is not None:
            retarget_graph(self.gm, device)
        return self

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.kind != "module":
            _check_ids(self, input_ids)
        if input_ids.is_cuda and not self._kernels_loaded:
            self._load_kernels()
        with torch.no_grad():
            return self._eager_graph()(input_ids.to(self.device))

    def _eager_graph(self) -> Any:
        """The graph forward() runs. On the CPU: quantized weights dequantized once when half
        the available memory holds them (the same numbers; qcompiler/dequantized_linears.py,
        shared with the decode program), MoE experts on their routed tokens only
        (qcompiler/routed_experts.py). Elsewhere the graph as stored."""
        if self.device.type != "cpu":
            return self.gm
        if not self._eager:
            from qcompiler.dequantized_linears import dequantized_copy
            from qcompiler.routed_experts import copy_graph_module, enabled, route_experts

            gm = self.gm
            if self._dequantized_weights_fit():
                gm = dequantized_copy(gm, self._dequantized)
            if enabled():
                routed = gm if gm is not self.gm else copy_graph_module(gm)
                if route_experts(routed):
                    gm = routed
            self._eager = [gm]
        return self._eager[0]

    def decoder(self, dequantize_weights: bool | None = None) -> Any:
        """The KV-cache decode program (qcompiler/decode_program.py) for the current device, or
        None when the graph has none. `dequantize_weights` (default: on CPU, when half the
        available memory holds them, qcompiler/dequantized_linears.py) keeps float weights
        dequantized once, 4 bytes per weight on top of the packed codes."""
        from qcompiler.decode_program import DecodeUnsupported, build_decode_program

        device = self.device
        if dequantize_weights is None:
            dequantize_weights = device.type == "cpu" and self._dequantized_weights_fit()
        key = (str(device), bool(dequantize_weights))
        if key not in self._decoders:
            if device.type == "cuda" and not self._kernels_loaded:
                self._load_kernels()
            try:
                decoder = build_decode_program(self.program,
                                               dequantize_weights=dequantize_weights,
                                               weight_cache=self._dequantized)
            except DecodeUnsupported:
                decoder = None
            self._decoders = {key: decoder}  # one at a time: a decoder may hold float weights
        return self._decoders[key]

    def _dequantized_weights_fit(self) -> bool:
        """Decided once per device: the forward graph and the decode program share the copy."""
        from qcompiler.dequantized_linears import dequantized_bytes, fits_in_memory

        if self._fits is None:
            self._fits = fits_in_memory(self.gm)
            if not self._fits:
                import sys

                sys.stderr.write(f"note: running with the quantized weights: dequantized once "
                                 f"they would take {dequantized_bytes(self.gm) / 2**30:.1f} GiB, "
                                 "more than half the memory available (QC_DEQUANTIZE_WEIGHTS=1 "
                                 "forces it)\n")
        return self._fits

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
                 **options: Any) -> torch.Tensor:
        """Token ids [B, T + new], as Hugging Face's generate: greedy unless do_sample; options
        temperature, top_k, top_p, eos_token_id, attention_mask, pad_token_id, generator,
        streamer, use_cache (see qcompiler/generation.py)."""
        if self.kind != "causal-lm":
            raise QCompilerError(f"generate needs a decoder; this artifact is a '{self.kind}'")
        from qcompiler.generation import generate as _generate

        return _generate(self, input_ids, max_new_tokens, **options)

    def tokenizer(self) -> Any:
        """The tokenizer shipped in the artifact, or None."""
        if self.path is None or not (self.path / artifact.TOKENIZER).is_dir():
            return None
        return load_tokenizer(self.path / artifact.TOKENIZER)


def load(path: str | os.PathLike, *, device: str | torch.device | None = None,
         verify: bool = True, trust_pickle: bool = False) -> LoadedModel:
    """Load the artifact at `path` after checking it (see `qcompiler.artifact_check`): the
    integrity record is complete and stays inside the directory, every file matches its hash
    (`verify=False` skips only the hashing), and the tensor shapes and dtypes agree between the
    manifest, the weights header and the program before any tensor is allocated. Nothing in the
    artifact runs code: program.pt2 is read with the restricted unpickler unless `trust_pickle`.
    """
    import qcompiler.ops  # noqa: F401  (registers the qc:: ops before the archive is read)
    from qcompiler.artifact_check import check_kernels, verify_artifact
    from qcompiler.export_archive import load_exported

    directory = Path(path)
    manifest = artifact.read_manifest(directory)
    verify_artifact(directory, manifest, verify=verify)
    program = load_exported(directory / artifact.PROGRAM, trust_pickle=trust_pickle)
    table = manifest["tensors"]
    stubs = program.tensors()
    for name, stub in stubs.items():
        expected = table.get(name)
        if expected is None:
            raise QCompilerError(f"artifact {directory}: weights.safetensors lacks {name}; "
                                 "recompile it")
        dtype = artifact.safetensors_dtype(stub.dtype)
        loaded_as = expected.get("load_as", expected["dtype"])
        if list(stub.shape) != expected["shape"] or dtype != loaded_as:
            raise QCompilerError(f"artifact {directory}: program.pt2 expects {name} as "
                                 f"{stub.dtype} {list(stub.shape)}, the manifest says "
                                 f"{loaded_as} {expected['shape']}; recompile it")
    check_kernels(directory, program)  # they are Python that CUDA would import: must be ours
    tensors = artifact.load_safetensors(directory / artifact.WEIGHTS)
    for name, stub in stubs.items():  # stored narrower where exact (qcompiler.storage_dtype)
        program.set_tensor(name, tensors.pop(name).to(stub.dtype))
    program.gm.recompile()
    model = LoadedModel(program, manifest, directory).eval()
    return model.to(device) if device is not None else model


def move_program(program: Program, device: str | torch.device) -> Program:
    """Move a Program's tensors and graph constants to `device` (in place); returns it."""
    device = torch.device(device)
    if device.type != "cpu" or any(t.device != device for t in program.gm.buffers()):
        program.gm.to(device)
        retarget_graph(program.gm, device)
    return program


def generate(model: Any, input_ids: torch.Tensor, max_new_tokens: int = 32,
             eos_token_id: int | None = None, **options: Any) -> torch.Tensor:
    """Generation with any causal-LM LoadedModel or Program: see qcompiler/generation.py.

    Returns the prompt followed by the generated tokens, [B, T + new]; greedy by default; stops
    at `eos_token_id` (kept) or at the model's maximum length."""
    from qcompiler.generation import generate as _generate

    return _generate(model, input_ids, max_new_tokens, eos_token_id=eos_token_id, **options)


def _check_ids(model: LoadedModel, input_ids: Any) -> None:
    """One-line errors for what would otherwise fail deep in the graph."""
    from qcompiler.generation import check_token_ids

    if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 and not \
            input_ids.is_floating_point():
        if input_ids.shape[0] > model.max_batch:
            raise QCompilerError(f"batch of {input_ids.shape[0]} is above the compiled maximum "
                                 f"of {model.max_batch}; split it")
        if input_ids.shape[1] > model.max_length:
            raise QCompilerError(f"{input_ids.shape[1]} tokens is more than the model's maximum "
                                 f"of {model.max_length}; shorten the input")
        check_token_ids(model, input_ids)

"""Capture through `torch.export`: in-memory modules, Hugging Face models and directories.

Non-strict `torch.export` with a dynamic sequence length (and batch, for language models) keeps
`aten.linear` as one node (no decompositions); `normalize_export` then rebuilds the exported
module in the unlifted form `Program` documents. `qcompiler.capture.capture` dispatches here
for modules and model directories, and the zoo builds its tiny models with `capture_hf_model`;
this module sits below both, so neither imports the other's helpers through a cycle.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.fx as fx

from qcompiler.errors import CaptureError, first_line
from qcompiler.graph_copy import copy_with_names
from qcompiler.program import DynamicDim, ModelKind, Program

DEFAULT_SEQ_LEN = 16
# Language models are captured with a dynamic batch dimension (1..MAX_BATCH). The example batch
# is 2: torch.export specializes a dimension whose example size is 1.
MAX_BATCH = 64
EXAMPLE_BATCH = 2


# ---- Hugging Face ------------------------------------------------------------------------------
class CausalLM(torch.nn.Module):
    """input_ids -> logits, so the captured program returns one tensor."""

    def __init__(self, hf: torch.nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=input_ids, use_cache=False).logits


class Encoder(torch.nn.Module):
    """input_ids -> last hidden state (pooling is the evaluator's job)."""

    def __init__(self, hf: torch.nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=input_ids).last_hidden_state


def hf_kind(config: Any) -> ModelKind:
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal-lm"
    if getattr(config, "is_decoder", False) or config.model_type in DECODER_TYPES:
        return "causal-lm"
    return "encoder"


DECODER_TYPES = {"llama", "qwen2", "mistral", "gpt2", "opt", "phi3", "phi", "gemma", "qwen3"}


def capture_hf_dir(path: Path, *, dynamic_seq: bool = True, trust_pickle: bool = False) -> Program:
    """Load an HF checkpoint directory offline (no hub access, no remote code) and capture it.

    Pickled checkpoints (pytorch_model.bin) are read with the restricted unpickler unless
    `trust_pickle`: plain tensors load, anything else is refused with a one-line error."""
    from qcompiler.safe_archive import PickleRefused, weights_only_unpickling

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as e:
        raise CaptureError(f"{path}/config.json is not a usable model config: {first_line(e)}")
    kind = hf_kind(config)
    auto = transformers.AutoModelForCausalLM if kind == "causal-lm" else transformers.AutoModel
    guard = contextlib.nullcontext() if trust_pickle else weights_only_unpickling()
    try:
        with guard:
            hf = auto.from_pretrained(str(path), local_files_only=True, dtype=torch.float32,
                                      trust_remote_code=False)
    except PickleRefused as e:
        raise CaptureError(f"{path} holds pickled weights that are not plain tensors ({e}); "
                           "loading them runs code. Re-run with --trust-pickle if you trust "
                           "them, or convert the checkpoint to safetensors") from None
    except Exception as e:  # transformers raises many types for a broken checkpoint
        raise CaptureError(f"cannot load the weights in {path}: {first_line(e)}")
    program = capture_hf_model(hf, source=str(path))
    program.meta["model_dir"] = str(path.resolve())
    return program


def capture_hf_model(hf: torch.nn.Module, *, source: str = "", seed: int = 0,
                     dynamic_batch: bool = True) -> Program:
    """Capture an in-memory HF model (used by the zoo and by HF directories).

    Batch (dim 0, 1..MAX_BATCH, unless `dynamic_batch=False`) and sequence (dim 1) are dynamic."""
    config = hf.config
    config.use_cache = False
    kind = hf_kind(config)
    hf.eval()
    wrapper = CausalLM(hf) if kind == "causal-lm" else Encoder(hf)
    g = torch.Generator().manual_seed(seed)
    batch = EXAMPLE_BATCH if dynamic_batch else 1
    ids = torch.randint(3, config.vocab_size, (batch, DEFAULT_SEQ_LEN), generator=g)
    max_len = min(int(getattr(config, "max_position_embeddings", 2048) or 2048), 4096)
    dims = [DynamicDim(0, 1, "seq", 2, max_len)]
    if dynamic_batch:
        dims.insert(0, DynamicDim(0, 0, "batch", 1, MAX_BATCH))
    from qcompiler import moe  # MoE experts export as per-expert linears (see qcompiler/moe.py)

    with moe.dense_experts(hf) as has_experts:
        program = export_module(wrapper, (ids,), ("input_ids",), dims, kind, source,
                                strip_prefix="hf.")
    if has_experts:
        moe.split_expert_weights(program)
    program.meta.update(
        architecture=(config.architectures or [type(hf).__name__])[0],
        model_type=config.model_type,
        config=config.to_dict(),
    )
    return program


# ---- plain modules -----------------------------------------------------------------------------
def capture_module(
    module: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor] | None,
    *,
    dynamic_seq: bool = True,
    source: str = "",
) -> Program:
    from transformers import PreTrainedModel

    if isinstance(module, PreTrainedModel):
        return capture_hf_model(module, source=source or type(module).__name__)
    if example_inputs is None:
        example_inputs = getattr(module, "example_inputs", None)
    if example_inputs is None:
        raise CaptureError(
            f"{type(module).__name__} needs example inputs: pass example_inputs=(tensor, ...) "
            "or give the module an `example_inputs` attribute"
        )
    inputs = tuple(example_inputs)
    dims = []
    if dynamic_seq:
        dims = [
            DynamicDim(i, 1, "seq", 2, 4096)
            for i, t in enumerate(inputs)
            if t.dim() >= 2 and t.shape[1] > 2
        ]
    names = tuple(f"input_{i}" for i in range(len(inputs)))
    module.eval()
    return export_module(module, inputs, names, dims, "module", source or type(module).__name__)


# ---- export and normalization ------------------------------------------------------------------
def export_module(module, inputs, names, dims, kind, source, strip_prefix="") -> Program:
    shell = Program(fx.GraphModule({}, fx.Graph()), inputs, names, dims, kind, source)
    try:
        with torch.no_grad():
            ep = torch.export.export(
                module, inputs, dynamic_shapes=shell.dynamic_shapes() if dims else None,
                strict=False,
            )
    except Exception as e:
        raise CaptureError(
            f"torch.export failed on {source or type(module).__name__}: {first_line(e)}"
        )
    return normalize_export(ep.module(), inputs, names, dims, kind, source, strip_prefix)


def normalize_export(gm, inputs, names, dims, kind, source, strip_prefix) -> Program:
    """Rebuild `ep.module()` as a plain GraphModule: tensors under their original dotted names
    (wrapper prefix stripped), placeholders named after the inputs, no pytree codegen and no
    runtime guard module; the output is the bare tensor(s)."""
    graph = gm.graph
    root: dict[str, Any] = {}
    new_names: dict[fx.Node, str] = {}
    for node in list(graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("_guards"):
            graph.erase_node(node)
        elif node.op == "get_attr":
            value = _fetch(gm, node.target)
            target = str(node.target).removeprefix(strip_prefix)
            root[target] = value
            node.target = target
            new_names[node] = target.replace(".", "_")
    for p, name in zip([n for n in graph.nodes if n.op == "placeholder"], names):
        p.target = name
        new_names[p] = name
    graph = copy_with_names(graph, new_names)  # public fx API; default codegen (no pytree)
    out = next(n for n in graph.nodes if n.op == "output")
    result = out.args[0]
    while isinstance(result, (tuple, list)) and len(result) == 1:
        result = result[0]
    out.args = (result,)
    new_gm = fx.GraphModule(_Root(root), graph)
    for target, value in root.items():  # GraphModule copies params; keep buffers as buffers
        _set(new_gm, target, value)
    new_gm.recompile()
    return Program(new_gm, tuple(inputs), tuple(names), list(dims), kind, source)


class _Root(torch.nn.Module):
    """A module holding tensors at dotted paths, so fx.GraphModule can copy them."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        for target, value in tensors.items():
            _set(self, target, value)


def _set(root: torch.nn.Module, target: str, value: Any) -> None:
    *path, attr = target.split(".")
    mod = root
    for part in path:
        if not hasattr(mod, part):
            mod.add_module(part, torch.nn.Module())
        mod = getattr(mod, part)
    if isinstance(value, torch.nn.Parameter):
        mod._buffers.pop(attr, None)
        mod._parameters[attr] = torch.nn.Parameter(value.detach(), requires_grad=False)
    elif isinstance(value, torch.Tensor):
        mod._parameters.pop(attr, None)
        mod.register_buffer(attr, value)
    else:
        setattr(mod, attr, value)


def _fetch(gm: torch.nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj

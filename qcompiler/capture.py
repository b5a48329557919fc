"""Capture: turn what a user points us at into a `Program`.

Accepted sources, tried in this order:
- an `nn.Module` (with `example_inputs`), or an HF `PreTrainedModel`;
- `zoo:NAME`, a bundled tiny model (see `qcompiler.zoo`);
- a Hugging Face model directory (config.json + safetensors), loaded offline;
- a `torch.export` archive (`.pt2` or any extension: we sniff the zip);
- a pickled `nn.Module` written with `torch.save`, only with `trust_pickle=True`, because
  unpickling runs arbitrary code.

Capture uses non-strict `torch.export` with a dynamic sequence length, keeps `aten.linear` as one
node (no decompositions), then normalizes the result to the unlifted form `Program` documents.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.fx as fx

from qcompiler.errors import CaptureError
from qcompiler.graph_copy import copy_with_names
from qcompiler.program import DynamicDim, ModelKind, Program

EXTRA_FILE = "qcompiler.json"  # our metadata inside a .pt2 archive (torch.export extra_files)
DEFAULT_SEQ_LEN = 16
# Language models are captured with a dynamic batch dimension (1..MAX_BATCH). The example batch
# is 2: torch.export specializes a dimension whose example size is 1.
MAX_BATCH = 64
EXAMPLE_BATCH = 2


def capture(
    source: Any,
    example_inputs: Sequence[torch.Tensor] | None = None,
    *,
    trust_pickle: bool = False,
    dynamic_seq: bool = True,
) -> Program:
    """Capture `source` as a Program; raises CaptureError with a one-line fix on bad input."""
    if isinstance(source, Program):
        return source
    if isinstance(source, torch.nn.Module):
        return capture_module(source, example_inputs, dynamic_seq=dynamic_seq)
    if not isinstance(source, (str, os.PathLike)):
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
        return capture_hf_dir(path, dynamic_seq=dynamic_seq, trust_pickle=trust_pickle)
    if not os.access(path, os.R_OK):
        raise CaptureError(f"cannot read {text}: permission denied")
    if _is_export_archive(path):
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
        program = _export(wrapper, (ids,), ("input_ids",), dims, kind, source, strip_prefix="hf.")
    if has_experts:
        moe.split_expert_weights(program)
    program.meta.update(
        architecture=(config.architectures or [type(hf).__name__])[0],
        model_type=config.model_type,
        config=config.to_dict(),
    )
    return program


# ---- plain modules and pickles -----------------------------------------------------------------
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
    return _export(module, inputs, names, dims, "module", source or type(module).__name__)


def _capture_pickle(path: Path, example_inputs: Any, *, dynamic_seq: bool) -> Program:
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


# ---- torch.export archives ---------------------------------------------------------------------
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
    _register_custom_ops()
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
    program = _normalize(gm, inputs, names, dims, info.get("kind", "module"), str(path), "")
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


# ---- export and normalization ------------------------------------------------------------------
def _export(module, inputs, names, dims, kind, source, strip_prefix="") -> Program:
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
    return _normalize(ep.module(), inputs, names, dims, kind, source, strip_prefix)


def _normalize(gm, inputs, names, dims, kind, source, strip_prefix) -> Program:
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


# ---- sniffing and helpers ----------------------------------------------------------------------
def _is_export_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith(("serialized_exported_program.json", "models/model.json"))
                   or "/models/" in n for n in z.namelist())


def _looks_like_pickle(path: Path) -> bool:
    if zipfile.is_zipfile(path):  # torch.save's default zip format
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("data.pkl") for n in z.namelist())
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"  # pickle protocol marker


def _register_custom_ops() -> None:
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


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]

"""Export a compiled artifact to the compressed-tensors format (what vLLM and transformers load).

    qcompile export out/llama-int4 --to compressed-tensors -o out/llama-int4-ct

The result is an ordinary Hugging Face directory: config.json (the model's config plus a
`quantization_config` with `quant_method: compressed-tensors`), model.safetensors and the
tokenizer. Formats it can express (compressed-tensors `pack-quantized`, W4A16):

- int4 (asymmetric): `weight_packed` int32 [N, K/8] holds the codes as signed values q - 8
  (compressed-tensors stores 4-bit integers in [-8, 7] and packs them offset by +8, eight per
  int32, lowest nibble first), `weight_zero_point` the zero point z - 8 packed the same way
  along N ([ceil(N/8), K/G]), `weight_scale` [N, K/G]: (q - z)·s is our dequantization exactly.
- int4-sym: our code is q + 8, so the stored value is code - 8; no zero point.
- nvfp4 (`nvfp4-pack-quantized`, NVFP4A16): our E2M1 codes (sign bit 3, two per byte, the
  even element in the low nibble) are compressed-tensors' layout as they are; the E4M3 block
  scale codes are reinterpreted as float8_e4m3fn; compressed-tensors divides by its global
  scale where we multiply, so `weight_global_scale` = 1 / ours (exact to 1 ulp of fp32).

The group size is kept (`strategy: group`). Whatever the pipeline folded into the weights
(rotations, smoothing, norm folding) is already in the exported tensors; anything it left as a
separate graph op that a Hugging Face model does not have cannot be expressed, so the export is
checked before writing: a plain HF model built from the dequantized weights must give the
artifact's logits (to 1e-3 relative), or the export stops with a one-line error.

Scales are stored in the export dtype (`dtype="auto"`: the checkpoint's, float32 when unknown).
Our scales are fp16: float16 and float32 keep them exactly, bfloat16 rounds them to 8 bits of
mantissa (choose float16 to avoid that).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qcompiler.errors import QCompilerError

EXPORTABLE = ("int4", "int4-sym", "nvfp4")
TARGETS = ("compressed-tensors",)
MARKER = "qcompiler-export.json"  # names the source artifact; lets --force replace an export
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CHECK_RTOL = 1e-3


@dataclass
class QLayer:
    """One quantized linear of the artifact, as the export needs it."""

    name: str
    format: str
    group_size: int
    n: int
    k: int
    parts: dict[str, str]  # QTensor part -> program tensor name
    bias: str | None


def export(artifact: str | os.PathLike, out: str | os.PathLike, *, to: str = "compressed-tensors",
           dtype: str = "auto", force: bool = False) -> Path:
    """Write `artifact` as a compressed-tensors HF directory at `out`; returns `out`."""
    from qcompiler.artifact import read_manifest
    from qcompiler.runtime import load

    if to not in TARGETS:
        raise QCompilerError(f"unknown export target '{to}'; known: {', '.join(TARGETS)}")
    out = Path(out)
    _check_replaceable(out, force)
    _check_formats(read_manifest(artifact))  # before the (slower) load
    model = load(artifact)
    program = model.program
    if program.kind != "causal-lm" or not program.meta.get("config"):
        raise QCompilerError("compressed-tensors export needs a Hugging Face decoder "
                             f"(this artifact is a '{program.kind}' model)")
    layers, plain = _scan(program)
    torch_dtype = _dtype(dtype, program.meta["config"])
    state = _state_dict(program, layers, torch_dtype)
    config = _hf_config(program.meta, layers, plain, state, torch_dtype)
    _check_equivalent(program, config, state, layers)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.absolute().parent))
    mask = os.umask(0o22)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes it private; an export is for others to read
    try:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tokenizer = Path(artifact) / "tokenizer"
        if tokenizer.is_dir():
            for f in tokenizer.iterdir():
                shutil.copyfile(f, tmp / f.name)
        (tmp / MARKER).write_text(json.dumps(
            {"artifact": str(artifact), "format": model.manifest.get("format"),
             "target": to, "dtype": str(torch_dtype).removeprefix("torch.")}, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---- reading the artifact ----------------------------------------------------------------------
def _check_formats(manifest: dict[str, Any]) -> None:
    for layer in manifest.get("layers", []):
        fmt = layer.get("format")
        if fmt not in ("fp", *EXPORTABLE):
            raise QCompilerError(
                f"format {fmt} (layer {layer.get('name')}) cannot be expressed in "
                f"compressed-tensors; exportable formats: {', '.join(EXPORTABLE)}")


def _scan(program: Any) -> tuple[list[QLayer], list[str]]:
    """The quantized linears (exportable formats only) and the names of float linears."""
    from qcompiler import ops

    layers, plain = [], []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        fmt = ops.format_of(node.target)
        if fmt is not None:
            if fmt not in EXPORTABLE:
                raise QCompilerError(
                    f"format {fmt} (layer {node.kwargs['layer']}) cannot be expressed in "
                    f"compressed-tensors; exportable formats: {', '.join(EXPORTABLE)}")
            parts = {p: str(a.target) for p, a in zip(ops.PARTS, node.args[1:6]) if a is not None}
            bias = node.args[6]
            layers.append(QLayer(node.kwargs["layer"], fmt, int(node.kwargs["group_size"]),
                                 int(node.kwargs["n"]), int(node.kwargs["k"]), parts,
                                 str(bias.target) if bias is not None else None))
        elif getattr(node.target, "namespace", None) == ops.NAMESPACE:
            what = str(node.target).split(".")[1]
            raise QCompilerError(
                f"the artifact's graph has {what}, which compressed-tensors cannot express here "
                f"(weight-only export); exportable formats: {', '.join(EXPORTABLE)} W4A16")
        elif node.target == torch.ops.aten.linear.default and node.args[1].op == "get_attr":
            plain.append(str(node.args[1].target).removesuffix(".weight"))
    if not layers:
        raise QCompilerError("the artifact has no quantized linear layers to export; "
                             f"compile with --format {' or '.join(EXPORTABLE)}")
    for layer in layers:
        if layer.k % layer.group_size:
            raise QCompilerError(f"{layer.name}: group size {layer.group_size} does not divide "
                                 f"K={layer.k}, which compressed-tensors' group strategy needs")
    return layers, plain


def _dtype(name: str, config: dict[str, Any]) -> torch.dtype:
    if name == "auto":
        name = str(config.get("dtype") or config.get("torch_dtype") or "float32")
        name = name.removeprefix("torch.")
        return DTYPES.get(name, torch.float32)
    if name not in DTYPES:
        raise QCompilerError(f"unknown --dtype {name}; use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def _state_dict(program: Any, layers: list[QLayer], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every float tensor of the program in `dtype`, quantized layers in compressed-tensors
    form (module docstring)."""
    from qcompiler.formats import packing

    used = {t for layer in layers for t in layer.parts.values()}
    state = {name: (t.detach().to(dtype) if t.is_floating_point() else t.detach())
             for name, t in program.tensors().items() if name not in used}
    for layer in layers:
        get = program.get_tensor
        if layer.format == "nvfp4":
            state[f"{layer.name}.weight_packed"] = get(layer.parts["codes"]).to(torch.uint8)
            state[f"{layer.name}.weight_scale"] = (
                get(layer.parts["scales"]).to(torch.uint8).view(torch.float8_e4m3fn))
            g = get(layer.parts["global_scale"]).to(torch.float64).reshape(1)
            state[f"{layer.name}.weight_global_scale"] = (1.0 / g).to(torch.float32)
            continue
        codes = packing.unpack(get(layer.parts["codes"]), 4, layer.k)
        state[f"{layer.name}.weight_packed"] = pack_int4(codes.to(torch.int8) - 8)
        state[f"{layer.name}.weight_scale"] = get(layer.parts["scales"]).to(dtype)
        state[f"{layer.name}.weight_shape"] = torch.tensor([layer.n, layer.k])
        if layer.format == "int4":
            zeros = get(layer.parts["zeros"]).to(torch.int8) - 8
            state[f"{layer.name}.weight_zero_point"] = pack_int4(zeros.T).T.contiguous()
    return state


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """compressed-tensors' packing of signed 4-bit values [R, C] (in [-8, 7]) along C: offset
    by +8, eight per int32, element i in bits 4·(i mod 8); C padded with zeros to a multiple
    of 8. (The same layout as compressed_tensors' pack_to_int32 for 4 bits.)"""
    rows, cols = values.shape
    v = values.to(torch.int64) + 8
    pad = (-cols) % 8
    if pad:
        v = torch.nn.functional.pad(v, (0, pad))
    v = v.reshape(rows, -1, 8)
    shifts = torch.arange(8, dtype=torch.int64) * 4
    words = (v << shifts).sum(-1)  # disjoint nibbles: sum == OR, < 2^32
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


# ---- the HF directory --------------------------------------------------------------------------
def _hf_config(meta: dict[str, Any], layers: list[QLayer], plain: list[str],
               state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, Any]:
    config = {k: v for k, v in meta["config"].items() if k != "quantization_config"}
    config["architectures"] = [meta.get("architecture") or config.get("architectures", [""])[0]]
    config["dtype"] = str(dtype).removeprefix("torch.")
    config.pop("torch_dtype", None)
    _resolve_tied(config, state)
    config["quantization_config"] = quantization_config(layers, plain)
    return config


def quantization_config(layers: list[QLayer], plain: list[str]) -> dict[str, Any]:
    """The `quantization_config` block: one config group per (format, group size)."""
    schemes: dict[tuple[str, int], list[str]] = {}
    for layer in layers:
        schemes.setdefault((layer.format, layer.group_size), []).append(layer.name)
    groups = {}
    for i, ((fmt, group_size), names) in enumerate(sorted(schemes.items())):
        groups[f"group_{i}"] = {
            "targets": ["Linear"] if len(schemes) == 1 else names,
            "weights": _weight_args(fmt, group_size),
            "input_activations": None, "output_activations": None,
            "format": _FORMATS[fmt],
        }
    formats = {_FORMATS[fmt] for fmt, _ in schemes}
    return {"quant_method": "compressed-tensors",
            "format": formats.pop() if len(formats) == 1 else "mixed-precision",
            "quantization_status": "compressed", "config_groups": groups,
            "ignore": sorted(plain), "kv_cache_scheme": None, "sparsity_config": {}}


def _hf_model(config: dict[str, Any], device: str = "cpu") -> Any:
    """The plain (unquantized) HF model that `config` describes, randomly initialised."""
    import transformers

    plain = {k: v for k, v in config.items() if k != "quantization_config"}
    hf_config = transformers.AutoConfig.for_model(**plain)
    with torch.device(device):
        return getattr(transformers, config["architectures"][0])(hf_config).float().eval()


def _resolve_tied(config: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """Input and output embeddings: stored once when tied (the program may hold the shared
    tensor under either name), both and untied when a pass made them differ."""
    hf = _hf_model(config, "meta")
    names = {m: n for n, m in hf.named_modules()}
    out_module = hf.get_output_embeddings()
    if out_module is None:
        return
    embed, head = names[hf.get_input_embeddings()] + ".weight", names[out_module] + ".weight"
    tied = bool(config.get("tie_word_embeddings"))
    if embed in state and head in state:
        if tied and torch.equal(state[embed], state[head]):
            del state[head]
        else:
            config["tie_word_embeddings"] = False
    elif head in state and tied:
        state[embed] = state.pop(head)


_FORMATS = {"int4": "pack-quantized", "int4-sym": "pack-quantized",
            "nvfp4": "nvfp4-pack-quantized"}


def _weight_args(fmt: str, group_size: int) -> dict[str, Any]:
    if fmt == "nvfp4":
        return {"num_bits": 4, "type": "float", "symmetric": True, "strategy": "tensor_group",
                "group_size": group_size, "dynamic": False,
                "scale_dtype": "torch.float8_e4m3fn"}
    return {"num_bits": 4, "type": "int", "symmetric": fmt == "int4-sym", "strategy": "group",
            "group_size": group_size, "dynamic": False}


def _check_equivalent(program: Any, config: dict[str, Any], state: dict[str, torch.Tensor],
                      layers: list[QLayer]) -> None:
    """A plain HF model with the dequantized weights must reproduce the artifact's logits."""
    from qcompiler import ops

    hf = _hf_model(config)
    weights = {k: v.float() for k, v in state.items()
               if not k.endswith(("weight_packed", "weight_scale", "weight_shape",
                                  "weight_zero_point", "weight_global_scale"))}
    for layer in layers:
        parts = {p: program.get_tensor(t) for p, t in layer.parts.items()}
        weights[f"{layer.name}.weight"] = ops.dequantize_weight(
            layer.format, parts, group_size=layer.group_size, n=layer.n, k=layer.k)
    missing, unexpected = hf.load_state_dict(weights, strict=False)
    buffers = {name for name, _ in hf.named_buffers()}
    head, tied_head = hf.get_output_embeddings(), None
    if head is not None and head.weight is hf.get_input_embeddings().weight:
        tied_head = next(n for n, m in hf.named_modules() if m is head) + ".weight"
    missing = [m for m in missing if m not in buffers and m != tied_head]
    unexpected = [u for u in unexpected if u not in buffers]
    if missing or unexpected:
        name = (missing or unexpected)[0]
        raise QCompilerError(f"the artifact's tensors do not match {config['architectures'][0]} "
                             f"({'missing' if missing else 'unexpected'} {name}): the pipeline "
                             "changed the model's structure, which compressed-tensors cannot "
                             "express")
    ids = program.example_inputs[0][:1, :16]
    with torch.no_grad():
        want = program.gm(ids).float()
        got = hf(ids).logits.float()
    err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
    if err > CHECK_RTOL:
        raise QCompilerError(f"a Hugging Face model with the exported weights differs from the "
                             f"artifact (max logit error {err:.2e} relative): the pipeline left "
                             "ops in the graph that compressed-tensors cannot express")


def _check_replaceable(out: Path, force: bool) -> None:
    """Refuse to write over `out` unless `force` and it is an earlier export or empty."""
    if not out.exists():
        return
    if not force:
        raise QCompilerError(f"{out} already exists; choose another -o or pass --force")
    if not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file()):
        raise QCompilerError(f"{out} is not an earlier export (no {MARKER}); --force replaces "
                             "only an export or an empty directory: choose another -o")

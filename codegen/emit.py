"""Emission: one readable, self-contained Python file per kernel specialization.

    src = emit_kernel("razer4", 4096, 4096, 128, "model.layers.0.mlp.up_proj")
    src.name       # qc_razer4_gemv_n4096_k4096_g128
    src.gemm_name  # qc_razer4_gemm_n4096_k4096_g128
    src.file_name  # qc_razer4_n4096_k4096_g128.py
    emit_all(layer_specs, "out/kernels")   # one file per unique spec + index.json

A file holds, in order: a header comment (format, N, K, group size, source layers), the
specialization constants, the format family's dequant helpers copied from dequant.py, the two
small functions binding them to this format's constants, the GEMV and GEMM kernels (gemv.py,
gemm.py) and the launcher (launch.py). It imports only os, torch and triton. Output is a pure
function of the inputs (no dates, no paths, no dict-order accidents), so re-emitting gives
byte-identical files and artifacts diff cleanly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcompiler.codegen import (decode16, decode16_sim, dequant, gemm, gemm16, gemm16_decode,
                              gemv, gemv16)
from qcompiler.codegen.launch import LAUNCHER
from qcompiler.codegen.specialize import (GEMV_MAX_M, M_BUCKETS, DeviceLimits, KernelKind,
                                          KernelSpec, default_config, kind_for, make_spec)
from qcompiler.errors import QCompilerError

INDEX_FILE = "index.json"
INDEX_VERSION = 1
_RULE = "# " + "=" * 96


@dataclass(frozen=True)
class KernelSource:
    """One emitted file: the GEMV kernel's name, its GEMM sibling, the text and the file name."""

    name: str
    gemm_name: str
    source: str
    file_name: str
    spec: KernelSpec
    layers: tuple[str, ...]


def emit_kernel(format: str, N: int, K: int, group_size: int, layer: str | Sequence[str] = (),
                *, opts: dict[str, Any] | str | None = None) -> KernelSource:
    """The kernel file for one (format, N, K, group size) and the layer(s) it serves."""
    layers = (layer,) if isinstance(layer, str) else tuple(layer)
    spec = make_spec(format, N, K, group_size, opts, layer=layers[0] if layers else None)
    return emit_spec(spec, layers)


def emit_spec(spec: KernelSpec, layers: Sequence[str] = ()) -> KernelSource:
    plan = spec.plan
    gemv_name = spec.kernel_name(KernelKind.GEMV)
    gemm_name = spec.kernel_name(KernelKind.GEMM)
    sections = [
        ("specialization: compiled into the kernels as tl.constexpr",
         _constants(spec, gemv_name, gemm_name)),
        (f"dequant helpers ({plan.family.value} family, copied from qcompiler.codegen.dequant)",
         dequant.helper_source(plan)),
        (f"{plan.format} binding: decode operands once per group, then codes -> weights",
         dequant.binding_source(plan)),
        (f"GEMV: decode, M <= {GEMV_MAX_M}, fp32 FMA", gemv.render(gemv_name, plan)),
    ]
    gemv16_name = "None"
    if decode16.supported(plan):
        gemv16_name = gemv_name.replace("_gemv_", "_gemv16_", 1)
        sections.append(("fp16x2 GEMV (M = 1): inline-PTX decode and its Triton twin, from "
                         "qcompiler.codegen.decode16",
                         decode16_sim.triton_source(plan) + "\n\n"
                         + gemv16.render_dot(plan, spec.group_size) + "\n\n\n"
                         + gemv16.render(gemv16_name, plan, dequant.scale_source(plan),
                                         spec.group_size)))
    gemm16_name = "None"
    if gemm16.supported(plan):
        gemm16_name = gemm_name.replace("_gemm_", "_gemm16_", 1)
        sections.append(("tensor-core GEMM (M > 4): fp16 decode (inline PTX and its Triton "
                         "twin), from qcompiler.codegen.gemm16",
                         gemm16_decode.helper_source(plan) + "\n\n" + gemm16.render_asm(plan)
                         + "\n\n\n" + gemm16.render(gemm16_name, plan)))
    sections += [
        (f"GEMM: M > {GEMV_MAX_M}, tl.dot", gemm.render(gemm_name, plan)
         + f"\n\nGEMV16_KERNEL = {gemv16_name}\nGEMV_FP32_KERNEL = {gemv_name}"
         + f"\nGEMV_KERNEL = {gemv16_name if gemv16_name != 'None' else gemv_name}"
         + f"\nGEMM16_KERNEL = {gemm16_name}\nGEMM_FP32_KERNEL = {gemm_name}"
         + f"\nGEMM_KERNEL = {gemm16_name if gemm16_name != 'None' else gemm_name}"),
        ("launch", LAUNCHER),
    ]
    head = [_header(spec, gemv_name, gemm_name, layers), _docstring(spec),
            "import os\n\nimport torch\nimport triton\nimport triton.language as tl"]
    body = [f"{_section(title)}\n\n{text.strip(chr(10))}" for title, text in sections]
    source = "\n\n".join(p.strip("\n") for p in head) + "\n\n\n" + "\n\n\n".join(body) + "\n"
    return KernelSource(name=gemv_name, gemm_name=gemm_name, source=source,
                        file_name=spec.file_name, spec=spec, layers=tuple(layers))


def emit_all(specs: Iterable[Any], out_dir: str | Path) -> dict[str, Any]:
    """Write one file per unique specialization of `specs` and `index.json`; return the index.

    A spec is a `KernelSpec`, or any mapping/object with format, N (or n), K (or k),
    group_size and optionally layer (or layers) and opts (dict or JSON text). Layers sharing a
    specialization share its file, listed in the order given.
    """
    grouped: dict[KernelSpec, list[str]] = {}
    for item in specs:
        spec, layers = _coerce(item)
        bucket = grouped.setdefault(spec, [])
        bucket.extend(layer for layer in layers if layer not in bucket)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kernels: dict[str, Any] = {}
    layer_map: dict[str, str] = {}
    for spec, layers in grouped.items():
        src = emit_spec(spec, layers)
        _write(out / src.file_name, src.source)
        kernels[src.file_name] = {
            "format": spec.format, "N": spec.N, "K": spec.K, "group_size": spec.group_size,
            "opts": spec.opts, "gemv": src.name, "gemm": src.gemm_name, "layers": list(layers)}
        for layer in layers:
            if layer_map.get(layer, src.file_name) != src.file_name:
                raise QCompilerError(f"codegen: layer {layer} given two different kernel specs")
            layer_map[layer] = src.file_name
    index = {"version": INDEX_VERSION, "generator": "qcompiler.codegen", "kernels": kernels,
             "layers": layer_map}
    _write(out / INDEX_FILE, json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index


# ----------------------------------------------------------------------------- pieces


def _coerce(item: Any) -> tuple[KernelSpec, tuple[str, ...]]:
    if isinstance(item, KernelSpec):
        return item, ()

    def get(*names: str, default: Any = None) -> Any:
        for n in names:
            if isinstance(item, Mapping) and n in item:
                return item[n]
            if not isinstance(item, Mapping) and hasattr(item, n):
                return getattr(item, n)
        return default

    fmt, n, k, g = get("format"), get("N", "n"), get("K", "k"), get("group_size")
    if None in (fmt, n, k, g):
        raise QCompilerError(f"codegen: a kernel spec needs format, N, K and group_size; "
                             f"got {item!r}")
    layers = get("layers", default=None)
    if layers is None:
        layer = get("layer", "name")
        layers = () if layer is None else (layer,)
    layers = tuple(str(x) for x in layers)
    spec = make_spec(str(fmt), int(n), int(k), int(g), get("opts"),
                     layer=layers[0] if layers else None)
    return spec, layers


def _header(spec: KernelSpec, gemv_name: str, gemm_name: str, layers: Sequence[str]) -> str:
    from qcompiler.version import __version__

    plan = spec.plan
    opts = f" opts={spec.opts}" if spec.opts else ""
    rows = [
        _RULE,
        "# qcompiler generated kernel: fused-dequantization linear. Do not edit; re-emit instead.",
        f"# format:     {plan.format}{opts}  ({plan.description})",
        f"# decode:     {plan.family.value} codes, {plan.bits}-bit, scale {plan.scale.value}"
        + (", zero point" if plan.has_zero else "") + (", metadata" if plan.has_meta else "")
        + (", global scale" if plan.has_global_scale else ""),
        f"# shape:      N={spec.N} (out features) x K={spec.K} (in features), weight [N, K]",
        f"# group size: {spec.group_size} (along K)",
        f"# kernels:    {gemv_name} (M <= {GEMV_MAX_M})",
        f"#             {gemm_name} (M > {GEMV_MAX_M})",
    ]
    if layers:
        rows.append(f"# layers:     {layers[0]}")
        rows += [f"#             {layer}" for layer in layers[1:]]
    else:
        rows.append("# layers:     (none given)")
    rows += [f"# generator:  qcompiler {__version__}, qcompiler.codegen.emit", _RULE]
    return "\n".join(rows)


def _docstring(spec: KernelSpec) -> str:
    return (f'"""Fused-dequant linear for {spec.format}, N={spec.N}, K={spec.K}, group size '
            f'{spec.group_size}.\n\n'
            "`linear(x, tensors, bias=None, config=None)`: x is [M, K] fp16/bf16/fp32 on CUDA\n"
            "(or on the CPU under TRITON_INTERPRET=1); tensors are the QTensor parts (codes,\n"
            "scales and, as the format needs, zeros / meta / global_scale) in the layout of\n"
            "qcompiler's docs/CONTRACTS.md. `gemv` / `gemm` force one kernel family.\n"
            '"""\n')


def _section(title: str) -> str:
    return f"# -- {title} " + "-" * max(4, 94 - len(title))


def _constants(spec: KernelSpec, gemv_name: str, gemm_name: str) -> str:
    plan = spec.plan
    row_bytes = spec.K // plan.elems_per_unit * plan.unit_bytes
    groups = spec.K // spec.group_size
    shapes = {"codes": (spec.N, row_bytes), "scales": (spec.N, groups), "zeros": (spec.N, groups),
              "meta": (spec.N, groups), "global_scale": (1,)}
    parts = ", ".join(f"{k!r}: ({shapes[k]!r}, torch.{dt})" for k, dt in plan.part_dtypes)
    values = [
        ("FORMAT", repr(spec.format)), ("N", spec.N), ("K", spec.K),
        ("GROUP_SIZE", spec.group_size), ("OPTS", repr(spec.opts)), ("BITS", plan.bits),
        ("ELEMS_PER_UNIT", plan.elems_per_unit), ("UNIT_LOADS", plan.unit_bytes),
        ("HAS_ZERO", plan.has_zero), ("HAS_META", plan.has_meta),
        ("HAS_GLOBAL_SCALE", plan.has_global_scale), ("GEMV_MAX_M", GEMV_MAX_M),
        ("M_BUCKETS", repr(M_BUCKETS)), ("GEMV_NAME", repr(gemv_name)),
        ("GEMM_NAME", repr(gemm_name)), ("PARTS", "{" + parts + "}"),
    ]
    lines = [f"{k} = {v}" for k, v in values]
    lines.append(_default_configs(spec))
    return "\n".join(lines)


def _default_configs(spec: KernelSpec) -> str:
    """DEFAULT_CONFIGS literal: the untuned rule per kernel and M bucket, for an H100."""
    limits = DeviceLimits.reference()
    lines = ["DEFAULT_CONFIGS = {"]
    for kind in KernelKind:
        lines.append(f"    {kind.value!r}: {{")
        for b in M_BUCKETS:
            if kind_for(b) is kind:
                cfg = default_config(spec, kind, b, limits).as_launch_dict()
                args = ", ".join(f"{k}={v}" for k, v in cfg.items())
                lines.append(f"        {b}: dict({args}),")
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines)


def _write(path: Path, text: str) -> None:
    """Write only when the content changes (keeps mtimes, and Triton's caches, stable)."""
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)

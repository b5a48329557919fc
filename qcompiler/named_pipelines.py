"""Named pipelines: short names for pipeline strings (`--pipeline razer4-max`, `--format int4`).

A name is registered with a spec and a one-line description, usually next to the passes it uses
(pass modules may call `register_pipeline` at import; the pass registry is loaded before names
are listed). Every format of the formats library also names its default pipeline, which is
`default_pipeline_for_format`: canonicalize, dce, then lowering to the format.
"""

from __future__ import annotations

import difflib

from qcompiler.errors import UsageError

_PIPELINES: dict[str, tuple[str, str]] = {}


def register_pipeline(name: str, spec: str, description: str) -> None:
    """Make `name` stand for `spec` wherever a pipeline is accepted."""
    other = _PIPELINES.get(name)
    if other is not None and other[0] != spec:
        raise ValueError(f"pipeline {name!r} registered twice with different specs")
    _PIPELINES[name] = (spec, description)


def format_names() -> list[str] | None:
    """The formats library's names, or None while it cannot be imported."""
    try:
        from qcompiler import formats

        return list(formats.names())
    except Exception:  # the formats library is optional for the pass infrastructure
        return None


def default_pipeline_for_format(fmt: str, group_size: int | None = None) -> str:
    """What `--format FMT` runs: lower to FMT if lowering exists, else just report the layers."""
    from qcompiler.pass_registry import has_pass

    known = format_names()
    if known is not None and fmt not in known:
        close = difflib.get_close_matches(fmt, known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UsageError(f"unknown format '{fmt}'; {hint}(formats: {', '.join(known)})")
    if has_pass("lower-datatype"):
        options = f"format={fmt}" + (f",group-size={group_size}" if group_size is not None else "")
        return f"canonicalize,dce,lower-datatype{{{options}}},dce"
    return "canonicalize,dce,quantize-report"


def all_pipelines() -> dict[str, tuple[str, str]]:
    """name -> (spec, description), registered ones and one per format, sorted by name."""
    from qcompiler.pass_registry import all_passes

    all_passes()  # pass modules may register pipelines
    out = dict(_PIPELINES)
    for fmt in format_names() or []:
        if fmt not in out:
            out[fmt] = (default_pipeline_for_format(fmt), f"default pipeline for --format {fmt}")
        for name, entry in paper_pipelines(fmt).items():
            out.setdefault(name, entry)
    return dict(sorted(out.items()))


def paper_pipelines(fmt: str) -> dict[str, tuple[str, str]]:
    """The recipes of the papers, per weight format (`razer4-max`, `pot4-refine`, ...).

    - `F-clip`: the per-group clipping search on the layer output error (calibration data),
      after folding the norms: what RaZeR and AWQ-style RTN baselines do.
    - `F-max`: QuaRot rotation of the residual stream, then GPTQ with the format's own
      quantizer (Llama-family graphs; others say why not). With small calibration sets
      (16 x 512 tokens on SmolLM2-135M, 16 x 64 on stories260k) GPTQ alone did better for the
      FP grids and pot4 (bench/results/accuracy-rotation.md, accuracy-smollm2.md); at 128 x 512
      calibration tokens razer4 with rotation ties GPTQ alone (32.43 ±0.32 vs 32.31 ±0.09),
      fp4 still loses, int4 gains (accuracy-smollm2-spec.md): the evidence moves with the
      calibration size, so the recipe keeps the paper's rotation for every format. `--pipeline 'fold-norms,gptq,lower-datatype'`
      with `--format` is GPTQ alone.
    - `F-w4a8`: F-max plus FP8-E4M3 per-token activations (ZeroQuant-FP's W4A8).
    - `potN-refine`: the PoT paper's two steps, robust init then scale refinement on
      calibration data.
    """
    try:
        from qcompiler import formats

        f = formats.get(fmt)
    except Exception:
        return {}
    if f.role not in ("weight", "both") or f.bits > 4:
        return {}
    q = f"format={fmt}"
    lower = f"lower-datatype{{{q}}}"
    out = {
        f"{fmt}-clip": (f"canonicalize,dce,fold-norms,clip{{{q},objective=output-mse}},{lower},dce",
                        f"{fmt} with an output-error clipping search on calibration data"),
        f"{fmt}-max": (f"canonicalize,dce,fold-norms,rotate,gptq{{{q}}},{lower},dce",
                       f"{fmt} after Hadamard rotation and GPTQ (Llama-family models)"),
    }
    if f.bits == 4:
        out[f"{fmt}-w4a8"] = (f"canonicalize,dce,fold-norms,rotate,gptq{{{q}}},{lower},"
                              "quantize-act{format=fp8-e4m3},dce",
                              f"{fmt} weights (rotate + GPTQ) with FP8-E4M3 per-token activations")
    if fmt.startswith("pot"):
        out[f"{fmt}-refine"] = (f"canonicalize,dce,pot-refine{{{q}}},{lower},dce",
                                f"{fmt} with the PoT paper's scale refinement on calibration data")
    return out


def is_pipeline(name: str) -> bool:
    return name in _PIPELINES or name in all_pipelines()


def expand(name: str) -> str:
    """The spec behind `name`; UsageError naming the nearest pipeline when there is none."""
    pipelines = all_pipelines()
    if name not in pipelines:
        close = difflib.get_close_matches(name, list(pipelines), n=1)
        hint = f"did you mean '{close[0]}'?" if close else "see 'qcompile pipelines'"
        raise UsageError(f"unknown pipeline '{name}'; {hint}")
    return pipelines[name][0]


register_pipeline("cleanup", "canonicalize,dce", "normalize matmuls to linears, drop no-ops")
register_pipeline(
    "report", "canonicalize,dce,quantize-report", "list the quantizable linear layers in the IR"
)

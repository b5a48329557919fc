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


# Formats whose `F-max` leaves the rotation out. With GPTQ's defaults (act-order, output-error
# group scales) rotating gained these grids nothing on either real decoder measured and cost
# them accuracy on one or both, while it helped the uniform grids (int4, int4-sym, int3), nf4
# and the 2-3-bit ones (means of the calibration seeds, spread = max - min):
#   SmolLM2-135M perplexity, gptq -> rotate+gptq (bench/results/accuracy-smollm2.md, 3 / 2
#   seeds): razer4 32.86 -> 33.43 (spreads 0.06 / 1.40), fp4 33.39 -> 34.14 (0.88 / 0.32),
#   nvfp4 32.73 -> 33.42 (0.52 / 0.30), nvfp4-razer 32.08 -> 32.76 (0.36 / 0.34), pot4
#   38.90 -> 44.83 (0.42 / 1.28);
#   stories260k KL (bench/results/accuracy-rotation.md, 3 seeds): razer4 1.442 -> 1.469
#   (spreads 0.064 / 0.053), fp4 1.780 -> 1.771 (0.042 / 0.029), nvfp4 1.541 -> 1.571
#   (0.033 / 0.055), nvfp4-razer 1.209 -> 1.265 (0.046 / 0.047), pot4 2.966 -> 3.069
#   (0.032 / 0.060).
# So razer4's losses are each inside the seeds' spread, but no real model gained; the rotation
# helps it only on random-init (Gaussian) weights. mxfp4 and dint4 lost on SmolLM2 and gained
# on stories260k: they keep it. The W4A8 recipes keep it for every format (it is there for the
# activations' outliers).
UNROTATED_MAX = frozenset({"razer4", "fp4", "nvfp4", "nvfp4-razer", "pot4"})


def paper_pipelines(fmt: str) -> dict[str, tuple[str, str]]:
    """The recipes of the papers, per weight format (`razer4-max`, `pot4-refine`, ...).

    - `F-clip`: the per-group clipping search on the layer output error (calibration data),
      after folding the norms: what RaZeR and AWQ-style RTN baselines do.
    - `F-max`: the most accurate weight-only recipe measured for the format: QuaRot rotation
      of the residual stream, then GPTQ with the format's own quantizer (Llama-family graphs;
      others say why not), except for the formats in UNROTATED_MAX, where GPTQ runs on the
      unrotated weights (see there).
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
    if fmt in UNROTATED_MAX:
        out[f"{fmt}-max"] = (f"canonicalize,dce,fold-norms,gptq{{{q}}},{lower},dce",
                             f"{fmt} with GPTQ, unrotated (rotation cost this grid accuracy on "
                             "real models: bench/results/accuracy-rotation.md)")
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

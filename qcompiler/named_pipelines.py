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
    return dict(sorted(out.items()))


def is_pipeline(name: str) -> bool:
    return name in _PIPELINES or name in (format_names() or [])


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

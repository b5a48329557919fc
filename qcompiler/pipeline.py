"""Pipeline syntax: `a,b{key=value,list=1,2},c`, parsed into Pass instances and printed back.

The grammar is MLIR's textual pass pipeline without nesting:

    pipeline := pass (',' pass)*        pass := NAME ('{' option (',' option)* '}')?
    option   := KEY '=' VALUE           (a comma-part without '=' continues the previous VALUE)

so `rotate{layers=0,1,2,seed=3}` gives `layers=0,1,2` and `seed=3`. A parsed pipeline prints back
byte-identically (`format_pipeline`): each pass remembers the options the user wrote, in their
order and spelling, because that is what a reproducer and `--print-pipeline` must echo.
`Pass.canonical()` is the other printing: every non-default option in field order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from qcompiler.errors import QCompilerError, UsageError
from qcompiler.passes_base import Pass

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class PassSpec:
    """One pipeline element before it is bound to a pass class."""

    name: str
    options: tuple[tuple[str, str], ...] = ()
    column: int = 1  # 1-based, for error messages

    def __str__(self) -> str:
        if not self.options:
            return self.name
        return f"{self.name}{{{','.join(f'{k}={v}' for k, v in self.options)}}}"


def split_pipeline(spec: str) -> list[PassSpec]:
    """The syntax alone: names and raw option texts; UsageError with a column on bad syntax."""
    if not spec.strip():
        return []
    items: list[PassSpec] = []
    i, n = 0, len(spec)
    while True:
        j = i
        while j < n and spec[j] not in ",{}":
            j += 1
        name = spec[i:j].strip()
        if not name:
            raise _syntax(spec, i, "expected a pass name")
        if not _NAME.match(name):
            raise _syntax(spec, i, f"'{name}' is not a pass name")
        options: tuple[tuple[str, str], ...] = ()
        if j < n and spec[j] == "{":
            close = spec.find("}", j)
            if close < 0:
                raise _syntax(spec, j, f"missing '}}' after the options of {name}")
            if "{" in spec[j + 1:close]:
                raise _syntax(spec, spec.index("{", j + 1), "nested '{' is not allowed")
            options = _split_options(spec, j + 1, close, name)
            j = close + 1
        items.append(PassSpec(name, options, i + 1))
        if j == n:
            return items
        if spec[j] != ",":
            raise _syntax(spec, j, f"expected ',' after {name}, got '{spec[j]}'")
        i = j + 1
        if i == n:
            raise _syntax(spec, j, "trailing ','")


def _split_options(spec: str, start: int, end: int, name: str) -> tuple[tuple[str, str], ...]:
    options: list[list[str]] = []
    pos = start
    for part in spec[start:end].split(",") if end > start else []:
        if "=" in part:
            key, value = part.split("=", 1)
            key = key.strip()
            if not key:
                raise _syntax(spec, pos, f"{name}: option without a name")
            options.append([key, value.strip()])
        elif options:
            options[-1][1] += "," + part.strip()  # a list value: `list=1,2`
        else:
            raise _syntax(spec, pos, f"{name}: expected key=value, got '{part.strip()}'")
        pos += len(part) + 1
    return tuple((k, v) for k, v in options)


def _syntax(spec: str, index: int, message: str) -> UsageError:
    return UsageError(f"pipeline syntax error at column {index + 1} of '{spec}': {message}")


def parse_pipeline(spec: str, registry: Mapping[str, type[Pass]] | None = None) -> list[Pass]:
    """Pass instances for `spec`; errors name the pass or option and how to fix it.

    `registry` replaces the global pass registry (tests use it for throwaway passes).
    """
    passes: list[Pass] = []
    for item in split_pipeline(spec):
        if registry is None:
            from qcompiler.pass_registry import get_pass

            cls = get_pass(item.name)
        elif item.name in registry:
            cls = registry[item.name]
        else:
            from qcompiler.pass_registry import unknown_pass_message

            raise UsageError(unknown_pass_message(item.name, list(registry)))
        passes.append(cls.from_options(item.options))
    return passes


def format_pipeline(passes: Sequence[Pass], canonical: bool = False) -> str:
    """The pipeline string: as written by the user, or with `canonical=True` every pass in its
    canonical form (all non-default options)."""
    return ",".join(p.canonical() if canonical else str(p) for p in passes)


# Passes with `format`, `group-size` and `scale` options that `--format` / `--group-size` /
# `--scale` fill in.
FORMAT_PASSES = ("lower-datatype", "clip", "gptq", "lorc")


def resolve_pipeline(pipeline: str | None, format: str | None, group_size: int | None,
                     on_indivisible: str | None = None, *, quantize_head: bool = False,
                     quantize_embeddings: bool = False, scale: str | None = None) -> str:
    """The pipeline string the CLI runs, from `--pipeline`, `--format` and `--group-size`.

    No `--pipeline`: the format's default pipeline. With one, named pipelines in it are expanded
    and `--format` / `--group-size` fill in the options it does not set on the passes that quantize
    weights to a format (`lower-datatype`, `clip`, `gptq`, `lorc`), so a pipeline can be written
    once for every format: `--format int4 --pipeline 'canonicalize,fold-norms,gptq,lower-datatype'`.
    `--on-indivisible` fills `lower-datatype`'s option of that name the same way, and `--scale`
    the `scale` option of the quantizing passes (passes/_weight_common.py);
    `--quantize-head` drops `lm_head` from its default `skip` list (where the pipeline sets no
    `skip`), and `--quantize-embeddings` adds `quantize-embedding` after the lowering.
    """
    from qcompiler import named_pipelines

    if not pipeline:
        if format is None:
            return ""
        pipeline = named_pipelines.default_pipeline_for_format(format, group_size)
        if on_indivisible is None and not quantize_head and not quantize_embeddings and \
                scale is None:
            return pipeline
    items = _expand_named(split_pipeline(pipeline), ())
    fill = {"format": format, "group-size": None if group_size is None else str(group_size),
            "scale": scale}
    out = []
    for item in items:
        extra: tuple[tuple[str, str], ...] = ()
        given = {k for k, _ in item.options}
        if item.name in FORMAT_PASSES:
            extra = tuple((k, v) for k, v in fill.items() if v is not None and k not in given)
        if item.name == "lower-datatype" and on_indivisible and "on-indivisible" not in given:
            extra += (("on-indivisible", on_indivisible),)
        if item.name == "lower-datatype" and quantize_head and "skip" not in given:
            extra += (("skip", ",".join(_default_skip_without_head())),)
        if extra:
            item = PassSpec(item.name, item.options + extra, item.column)
        out.append(str(item))
    if quantize_embeddings and "quantize-embedding" not in {i.name for i in items}:
        at = max((i for i, item in enumerate(items) if item.name == "lower-datatype"),
                 default=len(items) - 1) + 1
        out[at:at] = ["quantize-embedding"]
        if out[-1] != "dce":
            out.append("dce")  # the fp table is dead now: drop it from the artifact
    return ",".join(out)


def _default_skip_without_head() -> list[str]:
    """lower-datatype's default skip patterns minus the LM head."""
    import dataclasses

    from qcompiler.pass_registry import get_pass

    field = next(f for f in dataclasses.fields(get_pass("lower-datatype")) if f.name == "skip")
    return [p for p in field.default if p != "lm_head"]


def _expand_named(items: list[PassSpec], seen: tuple[str, ...]) -> list[PassSpec]:
    """Replace elements that name a pipeline (and no pass) by that pipeline's passes."""
    from qcompiler import named_pipelines
    from qcompiler.pass_registry import has_pass

    out: list[PassSpec] = []
    for item in items:
        if item.options or has_pass(item.name) or not named_pipelines.is_pipeline(item.name):
            out.append(item)
            continue
        if item.name in seen:
            raise UsageError(f"named pipeline '{item.name}' includes itself")
        spec = named_pipelines.expand(item.name)
        out.extend(_expand_named(split_pipeline(spec), seen + (item.name,)))
    return out


def check_format_options(passes: list[Any]) -> None:
    """Reject format, group-size and scale options that no model could satisfy, before capture
    (UsageError, exit 2): `-g 0`, a negative group, a group size the format does not support,
    a scale mode the format or the pass cannot keep.
    Whether a group divides each layer's K can only be known after capture."""
    from qcompiler import formats

    for p in passes:
        name, group = getattr(p, "format", None), getattr(p, "group_size", None)
        if not isinstance(name, str) or not name:
            continue
        try:
            fmt = formats.get(name)
        except QCompilerError as e:
            raise UsageError(f"{p.name}: {e}") from None
        if getattr(p, "scale", None) is not None:
            from qcompiler.passes._scale_modes import scale_options

            try:
                scale_options(p.name, fmt, p.scale, getattr(p, "keeps_whole_rows", True))
            except QCompilerError as e:
                raise UsageError(str(e)) from None
        if group is None:
            continue
        if group <= 0:
            raise UsageError(f"{p.name}: group size must be a positive number of weights along "
                             f"K, got {group}; {fmt.name} supports "
                             f"{', '.join(map(str, fmt.group_sizes))}")
        per_row = fmt.per_row or fmt.default_group_size is None  # group == K is allowed
        if group not in fmt.group_sizes and not per_row:
            raise UsageError(f"{p.name}: format {fmt.name} does not support group size {group} "
                             f"(allowed: {', '.join(map(str, fmt.group_sizes))}); choose one "
                             "with --group-size")

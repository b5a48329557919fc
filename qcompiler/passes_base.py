"""What a pass is: a frozen dataclass whose fields are its options.

    @register_pass
    @dataclass(frozen=True)
    class LowerDatatype(Pass):
        '''Replace constant-weight linears by quantized qc.* ops in the given format.'''

        name = "lower-datatype"
        format: str = "razer4"
        group_size: int = 128          # written `group-size=128` in a pipeline

Options are typed so that a pipeline string is checked before anything runs: `int`, `float`,
`str`, `bool` (`true`/`false`), `Literal[...]` enums, `tuple[int, ...]` lists (`1,2,3`) and
`X | None` (`none`). Checks across options go in `__post_init__`, raising ValueError with a
message that says how to fix them (the pipeline parser reports it as a usage error, prefixed
with the pass name). A pass never mutates a tensor in place (it replaces it with
`program.set_tensor`): the pass manager snapshots the program before each pass by sharing tensors,
and that snapshot is what a reproducer replays. A user error inside a pass is
`raise PassError(self.name, "what is wrong; how to fix it")`.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Literal, Sequence, TypeVar

from qcompiler.errors import UsageError

T = TypeVar("T")


@dataclass
class PassResult:
    """What a pass reports: whether it changed the program, and counts (`layers-changed`)."""

    modified: bool
    stats: dict[str, int] = field(default_factory=dict)


@dataclass
class PassContext:
    """State shared by every pass of one pipeline run (not part of the IR).

    `calibration` holds calibration data for passes that need activations (GPTQ, smoothing);
    `report` collects what passes want shown to the user or written into the artifact report.
    """

    verbose: int = 0
    quiet: bool = False
    calibration: Any = None
    report: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    seed: int = 0
    stream: Any = None  # where notes go; None means sys.stderr at the time of writing

    def log(self, message: str, level: int = 1) -> None:
        """A note shown with -v (level 1) or -vv (level 2)."""
        if self.verbose >= level and not self.quiet:
            (self.stream or sys.stderr).write(f"note: {message}\n")

    def warn(self, message: str) -> None:
        if not self.quiet:
            (self.stream or sys.stderr).write(f"warning: {message}\n")

    def progress(
        self, items: Iterable[T], *, total: int | None = None, desc: str = ""
    ) -> Iterable[T]:
        """A progress bar on stderr, only for a person watching a terminal (never in logs)."""
        if self.quiet or not sys.stderr.isatty():
            return items
        try:
            from tqdm import tqdm
        except ImportError:
            return items
        return tqdm(items, total=total, desc=desc or None, file=sys.stderr, leave=False)


@dataclass(frozen=True)
class OptionSpec:
    """One option of a pass, as the pipeline syntax and `--list-passes` see it."""

    key: str  # kebab-case, as written in a pipeline
    field: str  # the dataclass field
    type: Any
    default: Any  # dataclasses.MISSING when required

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    def describe(self) -> str:
        if self.required:
            default = "required"
        elif self.default in ((), [], ""):
            default = "default empty"
        else:
            default = f"default {format_value(self.default)}"
        return f"{self.key}: {type_name(self.type)} ({default})"


@dataclass(frozen=True)
class Pass:
    """Base class; subclasses are frozen dataclasses with a kebab-case class-level `name`."""

    name: ClassVar[str] = ""

    def apply(self, program: Any, ctx: PassContext) -> PassResult:
        raise NotImplementedError(f"{type(self).__name__}.apply")

    @classmethod
    def description(cls) -> str:
        """The docstring's first line: what `--list-passes` shows."""
        doc = (cls.__dict__.get("__doc__") or "").strip()
        if not doc or doc.startswith(f"{cls.__name__}("):  # the signature @dataclass fills in
            return ""
        return doc.splitlines()[0]

    @classmethod
    def options(cls) -> list[OptionSpec]:
        hints = typing.get_type_hints(cls)
        return [
            OptionSpec(f.name.replace("_", "-"), f.name, hints[f.name], _default(f))
            for f in dataclasses.fields(cls)
        ]

    @classmethod
    def from_options(cls, given: Sequence[tuple[str, str]]) -> Pass:
        """Build the pass from `(key, text)` pairs; errors say what the option expects."""
        specs = {o.key: o for o in cls.options()}
        values: dict[str, Any] = {}
        for key, text in given:
            spec = specs.get(key)
            if spec is None:
                raise UsageError(_unknown_option(cls.name, key, list(specs)))
            if spec.field in values:
                raise UsageError(f"{cls.name}: option '{key}' given twice")
            try:
                values[spec.field] = parse_value(text, spec.type)
            except ValueError:
                raise UsageError(
                    f"{cls.name}: option '{key}' expects {type_name(spec.type)}, got '{text}'"
                ) from None
        missing = [o.key for o in specs.values() if o.required and o.field not in values]
        if missing:
            raise UsageError(f"{cls.name}: missing required option '{missing[0]}'; "
                             f"write {cls.name}{{{missing[0]}=...}}")
        try:
            instance = cls(**values)
        except (ValueError, TypeError) as e:  # __post_init__ validation of option combinations
            raise UsageError(f"{cls.name}: {e}") from None
        object.__setattr__(instance, "_given", tuple(given))
        return instance

    def canonical(self) -> str:
        """`name{key=value,...}` with every non-default option, in field order."""
        parts = []
        for o in self.options():
            value = getattr(self, o.field)
            if o.required or value != o.default:
                parts.append(f"{o.key}={format_value(value)}")
        return f"{self.name}{{{','.join(parts)}}}" if parts else self.name

    def __str__(self) -> str:
        """As the user wrote it (options in their order and spelling), else canonical."""
        given = getattr(self, "_given", None)
        if given is None:
            return self.canonical()
        if not given:
            return self.name
        return f"{self.name}{{{','.join(f'{k}={v}' for k, v in given)}}}"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _unknown_option(pass_name: str, key: str, valid: list[str]) -> str:
    if not valid:
        return f"{pass_name}: unknown option '{key}'; {pass_name} takes no options"
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{pass_name}: unknown option '{key}'{hint} (options: {', '.join(valid)})"


# ---- option values -----------------------------------------------------------------------------
def _optional_inner(tp: Any) -> Any | None:
    """`X` for `X | None` / `Optional[X]`, else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def parse_value(text: str, tp: Any) -> Any:
    """Option text to a typed value; ValueError when it does not fit."""
    inner = _optional_inner(tp)
    if inner is not None:
        return None if text == "none" else parse_value(text, inner)
    if tp is bool:
        if text in ("true", "false"):
            return text == "true"
        raise ValueError(text)
    if tp is int:
        return int(text, 0) if text.lower().startswith(("0x", "0b", "0o")) else int(text)
    if tp is float:
        return float(text)
    if tp is str:
        return text
    if typing.get_origin(tp) is Literal:
        for choice in typing.get_args(tp):
            if format_value(choice) == text:
                return choice
        raise ValueError(text)
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        item = args[0]
        if text == "":
            return ()
        return tuple(parse_value(t, item) for t in text.split(","))
    raise TypeError(f"unsupported option type {tp!r}")


def format_value(value: Any) -> str:
    """The canonical text of an option value (what `parse_value` reads back)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(format_value(v) for v in value)
    return str(value)


def type_name(tp: Any) -> str:
    """How an error message names the type an option expects."""
    inner = _optional_inner(tp)
    if inner is not None:
        return f"{type_name(inner)} or none"
    names: dict[Any, str] = {
        bool: "true or false", int: "an integer", float: "a number", str: "a string",
    }
    if tp in names:
        return names[tp]
    if typing.get_origin(tp) is Literal:
        return "one of " + "|".join(format_value(c) for c in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        plural = {int: "integers", float: "numbers", str: "strings"}.get(item, type_name(item))
        return f"a comma-separated list of {plural}"
    return getattr(tp, "__name__", str(tp))


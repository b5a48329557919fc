"""Pipeline strings: parsing, typed options, printing back byte-identically, error text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.errors import UsageError
from qcompiler.passes_base import Pass, PassContext, PassResult
from qcompiler.pipeline import format_pipeline, parse_pipeline, resolve_pipeline, split_pipeline


@dataclass(frozen=True)
class Opts(Pass):
    """A pass with one option of every supported type."""

    name = "opts"
    group_size: int = 128
    alpha: float = 0.5
    label: str = "x"
    fast: bool = False
    mode: Literal["rtn", "gptq"] = "rtn"
    layers: tuple[int, ...] = ()
    seed: int | None = None

    def apply(self, program, ctx: PassContext) -> PassResult:
        return PassResult(False)


@dataclass(frozen=True)
class Needs(Pass):
    """A pass with a required option."""

    name = "needs"
    format: str

    def apply(self, program, ctx: PassContext) -> PassResult:
        return PassResult(False)


@dataclass(frozen=True)
class Plain(Pass):
    """A pass without options."""

    name = "plain"

    def apply(self, program, ctx: PassContext) -> PassResult:
        return PassResult(False)


REG = {"opts": Opts, "needs": Needs, "plain": Plain, "canonicalize": Plain}


def parse(spec: str) -> list[Pass]:
    return parse_pipeline(spec, registry=REG)


def test_options_are_typed():
    (p,) = parse("opts{group-size=64,alpha=1e-3,label=a.b,fast=true,mode=gptq,layers=1,2,3,seed=7}")
    assert p == Opts(64, 1e-3, "a.b", True, "gptq", (1, 2, 3), 7)
    assert parse("opts{seed=none}")[0].seed is None


def test_list_option_takes_commas_until_next_key():
    (a, b) = parse("opts{layers=0,1,2,fast=true},plain")
    assert a.layers == (0, 1, 2) and a.fast is True and isinstance(b, Plain)
    assert split_pipeline("a,b{key=value,list=1,2},c")[1].options == (("key", "value"),
                                                                       ("list", "1,2"))


def test_prints_back_what_the_user_wrote():
    spec = "plain,opts{mode=gptq,group-size=0064,layers=3,1},needs{format=razer4},plain"
    assert format_pipeline(parse(spec)) == spec


def test_canonical_form_lists_non_default_options_in_field_order():
    passes = parse("opts{mode=gptq,group-size=0064,fast=false},needs{format=int4}")
    assert format_pipeline(passes, canonical=True) == (
        "opts{group-size=64,mode=gptq},needs{format=int4}")
    assert Opts().canonical() == "opts" and str(Opts(layers=(1, 2))) == "opts{layers=1,2}"


def test_unknown_pass_suggests_the_nearest():
    with pytest.raises(UsageError) as e:
        parse_pipeline("canonicalise,dce")
    assert str(e.value) == "unknown pass 'canonicalise'; did you mean 'canonicalize'?"
    with pytest.raises(UsageError) as e:
        parse_pipeline("zzzz")
    assert str(e.value) == "unknown pass 'zzzz'; see 'qc-opt --list-passes'"


def test_unknown_option_names_nearest_and_lists_options():
    with pytest.raises(UsageError) as e:
        parse("opts{group-sise=64}")
    assert str(e.value) == (
        "opts: unknown option 'group-sise'; did you mean 'group-size'? "
        "(options: group-size, alpha, label, fast, mode, layers, seed)")
    with pytest.raises(UsageError, match=r"^plain: unknown option 'x'; plain takes no options$"):
        parse("plain{x=1}")


@pytest.mark.parametrize("spec, expected", [
    ("opts{group-size=abc}", "opts: option 'group-size' expects an integer, got 'abc'"),
    ("opts{alpha=big}", "opts: option 'alpha' expects a number, got 'big'"),
    ("opts{fast=yes}", "opts: option 'fast' expects true or false, got 'yes'"),
    ("opts{mode=awq}", "opts: option 'mode' expects one of rtn|gptq, got 'awq'"),
    ("opts{layers=1,x}",
     "opts: option 'layers' expects a comma-separated list of integers, got '1,x'"),
    ("opts{seed=s}", "opts: option 'seed' expects an integer or none, got 's'"),
    ("needs", "needs: missing required option 'format'; write needs{format=...}"),
    ("opts{fast=true,fast=false}", "opts: option 'fast' given twice"),
])
def test_bad_values(spec, expected):
    with pytest.raises(UsageError) as e:
        parse(spec)
    assert str(e.value) == expected


@pytest.mark.parametrize("spec, message", [
    ("plain,", "column 6 of 'plain,': trailing ','"),
    (",plain", "column 1 of ',plain': expected a pass name"),
    ("opts{fast=true", "column 5 of 'opts{fast=true': missing '}' after the options of opts"),
    ("opts{fast}", "column 6 of 'opts{fast}': opts: expected key=value, got 'fast'"),
    ("opts{a={b}}", "nested '{' is not allowed"),
    ("plain}x", "expected ',' after plain, got '}'"),
])
def test_syntax_errors_point_at_a_column(spec, message):
    with pytest.raises(UsageError) as e:
        parse(spec)
    assert str(e.value).startswith("pipeline syntax error at column") and message in str(e.value)


def test_empty_pipeline_is_no_passes():
    assert parse("") == [] and format_pipeline([]) == ""


# ---- round trip over generated pipelines ---------------------------------------------------
_word = st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=8)
_values = {
    "group-size": st.integers(-(2**40), 2**40).map(str),
    "alpha": st.floats(allow_nan=False, allow_infinity=False).map(repr),
    "label": _word,
    "fast": st.sampled_from(["true", "false"]),
    "mode": st.sampled_from(["rtn", "gptq"]),
    "layers": st.lists(st.integers(0, 99), max_size=4).map(lambda xs: ",".join(map(str, xs))),
    "seed": st.one_of(st.just("none"), st.integers(0, 9).map(str)),
}


@st.composite
def _opts_pass(draw) -> str:
    keys = draw(st.permutations(list(_values)))[: draw(st.integers(0, len(_values)))]
    if not keys:
        return "opts"
    return "opts{" + ",".join(f"{k}={draw(_values[k])}" for k in keys) + "}"


_element = st.one_of(st.just("plain"), _opts_pass(), _word.map(lambda w: f"needs{{format={w}}}"))


@settings(max_examples=200, deadline=None)
@given(st.lists(_element, min_size=1, max_size=5).map(",".join))
def test_round_trip(spec):
    passes = parse(spec)
    assert format_pipeline(passes) == spec
    canonical = format_pipeline(passes, canonical=True)
    assert parse(canonical) == passes
    assert format_pipeline(parse(canonical)) == canonical


# ---- resolving --pipeline / --format ---------------------------------------------------------
def test_named_pipelines_expand_inside_a_pipeline():
    assert resolve_pipeline("cleanup,quantize-report", None, None) == (
        "canonicalize,dce,quantize-report")
    assert resolve_pipeline("report", None, None) == "canonicalize,dce,quantize-report"


def test_format_default_pipeline(monkeypatch):
    from qcompiler import named_pipelines

    monkeypatch.setattr(named_pipelines, "format_names", lambda: ["razer4", "int4"])
    monkeypatch.setattr("qcompiler.pass_registry.has_pass", lambda n: n != "lower-datatype")
    assert resolve_pipeline(None, "razer4", None) == "canonicalize,dce,quantize-report"
    monkeypatch.setattr("qcompiler.pass_registry.has_pass", lambda n: True)
    assert resolve_pipeline(None, "int4", 64) == (
        "canonicalize,dce,lower-datatype{format=int4,group-size=64},dce")
    assert named_pipelines.all_pipelines()["razer4"][0] == (
        "canonicalize,dce,lower-datatype{format=razer4},dce")
    with pytest.raises(UsageError, match=r"unknown format 'razer5'; did you mean 'razer4'\?"):
        resolve_pipeline(None, "razer5", None)


def test_format_fills_lower_datatype_options_the_pipeline_leaves_out():
    spec = resolve_pipeline("canonicalize,lower-datatype{group-size=32},dce", "pot4", 64)
    assert spec == "canonicalize,lower-datatype{group-size=32,format=pot4},dce"


def test_unknown_named_pipeline():
    from qcompiler.named_pipelines import expand

    with pytest.raises(UsageError, match=r"^unknown pipeline 'clenup'; did you mean 'cleanup'\?$"):
        expand("clenup")


def test_list_passes_shows_every_option_with_a_default_that_parses_back(capsys):
    """`qc-opt --list-passes` is where users find the options; each printed default is one the
    pipeline syntax reads back to the pass's own default."""
    from qcompiler.cli.list_cmd import print_passes
    from qcompiler.pass_registry import all_passes
    from qcompiler.passes_base import parse_value

    print_passes()
    out = capsys.readouterr().out
    assert "                    act-order: true or false (default true)\n" in out
    assert "                    grid: a comma-separated list of numbers (default empty)\n" in out
    for name, cls in all_passes().items():
        block = out.split(f"\n{name:<18} ", 1)[-1] if not out.startswith(name) else out
        for option in cls.options():
            line = option.describe()
            assert line in block, (name, line)
            if option.required or option.default in ((), ""):
                continue
            text = line.rsplit("(default ", 1)[1][:-1]
            assert parse_value(text, option.type) == option.default, (name, option.key)

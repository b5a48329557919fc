"""Named pipelines: every registered name expands to a pipeline that parses, and `--format`
fills the format into the passes that quantize weights."""

from __future__ import annotations

import pytest

from qcompiler import named_pipelines
from qcompiler.errors import UsageError
from qcompiler.pipeline import format_pipeline, parse_pipeline, resolve_pipeline


@pytest.mark.parametrize("name", sorted(named_pipelines.all_pipelines()))
def test_every_named_pipeline_parses(name):
    passes = parse_pipeline(resolve_pipeline(name, None, None))
    assert passes, name


def test_paper_recipes_exist_for_the_seed_formats():
    names = named_pipelines.all_pipelines()
    for fmt in ("razer4", "fp4", "int4", "pot4", "nvfp4"):
        assert f"{fmt}-clip" in names and f"{fmt}-max" in names and f"{fmt}-w4a8" in names
    assert "pot4-refine" in names and "pot2-refine" in names
    assert "int2-w4a8" not in names  # W4A8 names 4-bit weights only
    rotated = ["canonicalize", "dce", "fold-norms", "rotate", "gptq", "lower-datatype", "dce"]
    for fmt in ("int4", "razer4", "fp4", "nvfp4"):
        assert [p.name for p in parse_pipeline(names[f"{fmt}-max"][0])] == rotated, fmt
        assert "rotate" in names[f"{fmt}-w4a8"][0]


def test_format_and_group_size_fill_the_quantizing_passes():
    spec = resolve_pipeline("fold-norms,gptq,lower-datatype", "int4", 64)
    assert spec == ("fold-norms,gptq{format=int4,group-size=64},"
                    "lower-datatype{format=int4,group-size=64}")
    # options written in the pipeline win over --format
    spec = resolve_pipeline("clip{format=fp4},lower-datatype{format=fp4}", "int4", None)
    assert format_pipeline(parse_pipeline(spec)).count("format=fp4") == 2


def test_unknown_pipeline_names_the_nearest():
    with pytest.raises(UsageError, match="razer4-max"):
        named_pipelines.expand("razer4-maxx")

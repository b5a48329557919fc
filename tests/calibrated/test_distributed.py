"""Calibration over several processes (qcompiler/distributed.py, qcompiler/launch.py,
docs/DISTRIBUTED.md): two gloo processes on the CPU against one process.

What must hold: the same process count gives byte-identical artifacts; against one process, the
passes whose statistics do not depend on the reduction order (clip and awq: row samples merged
by seeded keys) give byte-identical artifacts, and GPTQ (Hessians summed in another order: last
bits differ, a few codes flip) is as accurate within the calibration seed spread; pot-refine
(Hessians too) within 1% of one process's output error. A failure on one rank is one `error:` line and a non-zero exit, and nothing is written.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from calib_helpers import Mixed

import dist_worker
from qcompiler.calibration import _Accumulator
from qcompiler.distributed import assign, decode, encode
from qcompiler.launch import launch

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(one-process root, two-process root), every pipeline of dist_worker compiled."""
    one = tmp_path_factory.mktemp("one")
    two = tmp_path_factory.mktemp("two")
    dist_worker.compile_all(one)
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", str(HERE))
    try:
        assert launch(2, ["compile", str(two)], module="dist_worker") == 0
    finally:
        mp.undo()
    return one, two


def _bytes(d: Path) -> bytes:
    return (d / "manifest.json").read_bytes()  # sha256 of every file but build.json


def test_same_process_count_gives_byte_identical_artifacts(runs):
    _, two = runs
    for name in dist_worker.TWICE:
        for f in ("weights.safetensors", "report.json", "manifest.json"):
            assert (two / f"{name}-0" / f).read_bytes() == (two / f"{name}-1" / f).read_bytes()


def test_order_free_statistics_match_one_process_bit_for_bit(runs):
    one, two = runs
    for name in ("clip", "awq"):
        assert _bytes(one / f"{name}-0") == _bytes(two / f"{name}-0"), name


def test_gptq_over_two_processes_is_as_accurate_within_the_seed_spread(runs):
    import qcompiler

    one, two = runs
    x = torch.randn(1, 256, 32, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        ref = Mixed().eval()(x)
        errs = [_rel(qcompiler.load(root / "gptq-0")(x), ref) for root in (one, two)]
        spread = torch.tensor([_direct_gptq_error(s, x, ref) for s in (11, 12, 13, 14)]).std()
    assert abs(errs[0] - errs[1]) <= float(spread), (errs, float(spread))


def test_pot_refine_over_two_processes_is_as_accurate(runs):
    import qcompiler

    one, two = runs
    x = torch.randn(1, 256, 32, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        ref = Mixed().eval()(x)
        e1, e2 = (_rel(qcompiler.load(root / "pot-0")(x), ref) for root in (one, two))
    assert abs(e1 - e2) <= 0.01 * e1, (e1, e2)


def test_only_rank_0_writes(runs):
    _, two = runs
    names = sorted(p.name for p in two.iterdir())
    expected = sorted([f"{n}-0" for n in dist_worker.PIPELINES] +
                      [f"{n}-1" for n in dist_worker.TWICE])
    assert names == expected  # no temp or partial directories beside them


def test_a_failure_on_one_rank_is_one_line_and_writes_nothing(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(HERE))
    rc = launch(2, ["nan", str(tmp_path)], module="dist_worker")
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("error: ") and "NaN" in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_cli_nproc(tmp_path, capfd):
    from qcompiler.cli.qcompile import main

    assert main(["zoo:llama-tiny", "-f", "int4", "--nproc", "0"]) == 2
    assert main([str(tmp_path / "missing"), "-f", "int4", "-o", str(tmp_path / "o"),
                 "--nproc", "2"]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--nproc must be >= 1" in err[0], err  # one line per run
    assert "no such file or directory" in err[1], err
    assert not (tmp_path / "o").exists()


def test_sample_reservoir_does_not_depend_on_the_split():
    """Rows kept from 5 batches by one accumulator == by two (batches 0,2,4 and 1,3) merged."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(700, 16, generator=g) for _ in range(5)]
    whole = _Accumulator(16, True, True, 1000, seed=3)
    parts = [_Accumulator(16, True, True, 1000, seed=3) for _ in range(2)]
    for i, x in enumerate(xs):
        for acc in (whole, parts[i % 2]):
            acc.start(i)
            acc.add(x)
    merged = _Accumulator(16, True, True, 1000, seed=3)
    for p in parts:
        merged.merge(p.rows, p.keys, p.pos)
    assert torch.equal(merged.rows, whole.rows) and torch.equal(merged.pos, whole.pos)
    assert torch.equal(torch.maximum(parts[0].absmax, parts[1].absmax), whole.absmax)
    torch.testing.assert_close(parts[0].hessian + parts[1].hessian, whole.hessian,
                               rtol=1e-5, atol=1e-3)
    assert whole.rows.shape == (1000, 16)


def test_encode_roundtrip_and_assignment():
    tensors = {"a": torch.arange(6, dtype=torch.int64).reshape(2, 3),
               "b": torch.tensor(1.5), "c": torch.zeros(0, 4, dtype=torch.float16),
               "d": torch.tensor([True, False]), "e": torch.randn(3, 2).to(torch.bfloat16)}
    back = decode(encode(tensors))
    assert list(back) == list(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    owner = assign([5.0, 1.0, 4.0, 2.0, 3.0], 2)
    assert owner == assign([5.0, 1.0, 4.0, 2.0, 3.0], 2)
    load = [sum(c for c, r in zip([5, 1, 4, 2, 3], owner) if r == k) for k in range(2)]
    assert sorted(load) == [7, 8]


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    y = y[0] if isinstance(y, (tuple, list)) else y
    return float(((y - ref) ** 2).sum() / (ref ** 2).sum())


def _direct_gptq_error(seed: int, x: torch.Tensor, ref: torch.Tensor) -> float:
    """Output error of GPTQ int4 g32 on both linears, calibrated on dist_worker's batches of
    `seed` (one process, straight through gptq_quantize): one sample of the seed spread."""
    from qcompiler import formats
    from qcompiler.gptq_core import gptq_quantize

    fmt = formats.get("int4")
    m = Mixed().eval()
    xs = torch.cat([b.reshape(-1, 32) for b in dist_worker.batches(seed=seed)])
    hidden = m.mix(xs)
    wm = fmt.dequantize(gptq_quantize(fmt, m.mix.weight.detach(), xs.T @ xs, 32))
    wp = fmt.dequantize(gptq_quantize(fmt, m.proj.weight.detach(), hidden.T @ hidden, 32))
    y = (x @ wm.T) @ wp.T + m.proj.bias
    return _rel(y, ref)

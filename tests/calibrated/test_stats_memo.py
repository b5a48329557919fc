"""qcompiler/stats_memo.py: inside `reuse()`, a second compile of the same fp model on the same
calibration data reuses the first one's statistics, and gets exactly what it would have
computed; a change of the weights, the data or the seed is a miss, and outside `reuse()`
nothing is stored."""

from __future__ import annotations

import torch

from qcompiler import stats_memo
from qcompiler.calibration import CalibrationConfig, collect_linear_stats
from qcompiler.driver import compile


def _model():
    from qcompiler import zoo

    return zoo.load("stories260k")


def _batches(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 500, (1, 24), generator=g) for _ in range(2)]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k].hessian, b[k].hessian) and a[k].tokens == b[k].tokens for k in a)


def test_hit_is_bit_equal_and_changes_miss():
    base = _model()
    batches = _batches(0)
    fresh = collect_linear_stats(base, batches, hessian=True, absmax=True)
    with stats_memo.reuse() as counts:
        first = collect_linear_stats(base, batches, hessian=True, absmax=True)
        first[next(iter(first))].hessian.add_(1.0)  # a pass changing its copy in place
        again = collect_linear_stats(base, batches, hessian=True, absmax=True)
        assert counts == {"hits": 1, "misses": 1}
        assert _same(again, fresh)  # bit-equal to the uncached computation, store untouched
        q, k = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"
        assert again[q].hessian is again[k].hessian  # q and k read one input: still shared
        collect_linear_stats(base, _batches(1), hessian=True, absmax=True)  # other data
        changed = base.clone()
        name, p = next((n, t) for n, t in changed.gm.named_parameters() if t.dim() == 2)
        p.data[0, 0] += 1e-3  # other weights
        collect_linear_stats(changed, batches, hessian=True, absmax=True)
        collect_linear_stats(base, batches, hessian=False, absmax=True)  # other flags
        assert counts == {"hits": 1, "misses": 4}
    with stats_memo.reuse() as counts:
        pass
    collect_linear_stats(base, batches, hessian=True)
    assert counts == {"hits": 0, "misses": 0}  # outside reuse(): not stored, not counted


def test_compiles_share_statistics_and_match_uncached():
    """Two GPTQ compiles (different formats) in one `reuse()`: one collection, and the same
    program as without reuse."""
    base = _model()
    cfg = CalibrationConfig(batches=_batches(0))
    pipe = ("canonicalize,dce,fold-norms,gptq{{format={f},group-size=16}},"
            "lower-datatype{{format={f},group-size=16,on-indivisible=pad}},dce")
    plain = compile(base.clone(), pipeline=pipe.format(f="int4"), quiet=True, calibration=cfg)
    with stats_memo.reuse() as counts:
        compile(base.clone(), pipeline=pipe.format(f="razer4"), quiet=True,
                calibration=CalibrationConfig(batches=_batches(0)))
        reused = compile(base.clone(), pipeline=pipe.format(f="int4"), quiet=True,
                         calibration=CalibrationConfig(batches=_batches(0)))
        assert counts["misses"] >= 1 and counts["hits"] == counts["misses"]
    x = _batches(5)[0]
    with torch.no_grad():
        assert torch.equal(plain.program(x)[0], reused.program(x)[0])

"""The C loop of RaZeR's search (qcompiler/formats/native) returns the torch loop's bytes.

Where a C compiler exists (CI has one) the formats use the C loop by default, so the golden
digests of test_golden.py already run through it; here the torch loop is forced for the RaZeR
formats' golden cases (it must keep matching too: it is what a machine without a compiler runs),
and the two loops are compared on larger and odder inputs than the run-time self-check's:
every supported group size, custom special sets, one group per row, groups not a multiple of
the 16 lanes, all-zero blocks, exact values, and the realistic weight of the speed bench.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from qcompiler import formats
from qcompiler.formats import razer_check, razer_search
from qcompiler.formats.fp4 import FP4_GRID
from qcompiler.formats.fp8 import E3M3
from qcompiler.formats.native import build
from qcompiler.formats.native import razer as native
from qcompiler.formats.nvfp4 import RECOVER_RATIOS, global_scale, top_blocks, two_level_snap
from qcompiler.formats.razer import RAZER_SPECIALS, special_ranges
from qcompiler.formats.scale_search import to_fp16_scale

from golden_cases import GOLDEN, cases, digest, run_case

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

LIB = razer_check.checked_lib()
needs_native = pytest.mark.skipif(LIB is None,
                                  reason="no C compiler here (or QC_NATIVE=0): torch loop only")
SPECIAL_SETS = [RAZER_SPECIALS, (5.0,), (-8.0, 8.0), (7.0, 10.0, -0.3), (8.0, 5.0, -5.0),
                (-7.5, -12.0, 2.5, 9.0)]


def heavy(seed: int, n: int, groups: int, gs: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, groups, gs, generator=gen) / torch.rand(n, groups, gs,
                                                              generator=gen).add(0.05)
    w[0, 0] = 0.0
    return w


def both(wg, specials, *args):
    ranges = special_ranges(specials)
    got = razer_search.search(wg, specials, ranges, 4, *args, lib=LIB)
    want = razer_search.search(wg, specials, ranges, 4, *args)
    return got, want


def assert_same(got, want):
    assert torch.equal(got[0], want[0]), "scales differ"
    assert torch.equal(got[1], want[1]), "special indices differ"


@needs_native
@pytest.mark.parametrize("gs", native.GROUP_SIZES)
@pytest.mark.parametrize("specials", SPECIAL_SETS)
def test_c_loop_equals_torch_loop_fp16_scales(gs, specials):
    for shape in ((9, 7), (40, 1), (3, 16)):  # 63 groups; one per row; exactly 3 x 16 lanes
        wg = heavy(gs + len(specials), *shape, gs)
        for mode in ("rtn", "clip"):
            for elementwise in (True, False):
                assert_same(*both(wg, specials, mode, to_fp16_scale, (), None, elementwise))


@needs_native
@pytest.mark.parametrize("gs", native.GROUP_SIZES)
@pytest.mark.parametrize("specials", SPECIAL_SETS)
def test_c_loop_equals_torch_loop_nvfp4_razer_rules(gs, specials):
    """E3M3 scales, recover ratios, banned top blocks; then the same on exact values, where
    the search stops early (every group exact) and the C loop must stop at the same ratio."""
    wg = heavy(3, 11, 5, gs)
    wg[4, 2, 0] = wg.abs().max() * 3  # the absmax: a banned top block
    absmax = wg.abs().amax()
    snap = two_level_snap(E3M3, global_scale(absmax, E3M3.max_value))
    got, want = both(wg, specials, "clip", snap, RECOVER_RATIOS, top_blocks(wg, absmax), True)
    assert_same(got, want)
    exact = FP4_GRID.round_values(wg / got[0].clamp(min=1e-30)) * got[0]
    unclipped = top_blocks(exact, exact.abs().amax())
    assert_same(*both(exact, specials, "clip", snap, RECOVER_RATIOS, unclipped, True))


@needs_native
def test_all_zero_weight():
    wg = torch.zeros(4, 3, 16)
    assert_same(*both(wg, RAZER_SPECIALS, "clip", to_fp16_scale, (), None, True))


@needs_native
@pytest.mark.parametrize("name", ["nvfp4-razer", "razer4"])
@pytest.mark.parametrize("threads", [1, 2])
def test_realistic_weight_same_bytes(name, threads):
    """The speed bench's weight (outlier channels), 256 rows: every packed byte equal, also
    with the C loop's blocks split between 2 threads."""
    from quantizer_speed import realistic_weight

    w = realistic_weight((256, 1024))
    fmt = formats.get(name)
    torch.set_num_threads(threads)  # the format tests' fixture restores 1
    q = fmt.quantize(w)
    torch.set_num_threads(1)
    with razer_check.torch_loop():
        ref = fmt.quantize(w)
    for key, t in ref.tensors().items():
        assert torch.equal(q.tensors()[key], t), key


@pytest.mark.parametrize("name", ["razer4", "razer4-kv", "nvfp4-razer"])
def test_torch_loop_keeps_the_golden_bytes(name):
    """What a machine without a C compiler runs: the recorded digests, through the torch loop."""
    import json

    expected = json.loads(GOLDEN.read_text())
    with razer_check.torch_loop():
        wrong = [cid for cid, fmt, spec in cases()
                 if fmt == name and digest(run_case(fmt, spec)) != expected[cid]]
    assert not wrong, f"{len(wrong)} case(s) changed bytes, first: {wrong[:3]}"


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("QC_NATIVE", "0")
    assert native.load() is None


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    """A compiler that fails: no library (the torch loop runs), no half-written file."""
    monkeypatch.setenv("QCOMPILER_CACHE_DIR", str(tmp_path))
    assert not build._build("false", build.SOURCE_DIR / "razer_search.c",
                            build.cache_dir() / "x.so")
    assert list((tmp_path / "native").iterdir()) == []


@pytest.mark.skipif(build.compiler() is None, reason="no C compiler on PATH")
def test_c_loop_is_used_where_a_compiler_exists():
    """With a compiler the C loop must build and pass its self-check against torch (else every
    comparison above would skip and the formats would quietly run 3x slower)."""
    assert LIB is not None


@pytest.mark.skipif(build.compiler() is None, reason="no C compiler on PATH")
def test_self_check_passes_here():
    """The check itself, not its marker from an earlier process."""
    so = native.load()
    assert so is not None and razer_check.matches_torch(so)


@pytest.mark.skipif(build.compiler() is None, reason="no C compiler on PATH")
@pytest.mark.parametrize("mutation", [
    # the group sums' accumulators added in reverse order (group sizes >= 32)
    ("for (int c = 1; c < accs; c++)", "for (int c = accs - 1; c >= 1; c--)"),
    # the einsum's products added last to first
    ("for (int e = 0; e < gs; e++)\n        for (int l = 0; l < LANES; l++) acc[l] +=",
     "for (int e = gs - 1; e >= 0; e--)\n        for (int l = 0; l < LANES; l++) acc[l] +="),
    # dq2 - d * d as one rounding (what a fused multiply-add would do)
    ("float x = r->dq2[e][l] - d * d;", "float x = (float)((double)r->dq2[e][l] - (double)d * d);"),
])
def test_self_check_rejects_a_c_loop_that_sums_differently(tmp_path, mutation):
    """The check is what keeps the bytes machine-independent: it must notice an ulp."""
    import ctypes

    old, new = mutation
    text = (build.SOURCE_DIR / "razer_search.c").read_text()
    assert old in text
    src = tmp_path / "mutant.c"
    src.write_text(text.replace(old, new))
    assert build._build(build.compiler(), src, tmp_path / "mutant.so")
    mutant = native.bind(ctypes.CDLL(str(tmp_path / "mutant.so")))
    assert not razer_check.matches_torch(mutant)

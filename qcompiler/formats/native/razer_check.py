"""The check that decides whether razer_search.c may run on this machine.

The C loop must compute the torch loop's (razer_search.py) errors bit for bit, not merely pick
the same candidates on a few groups: a wrong summation order changes an error by an ulp and a
choice only at a near-tie, which small inputs rarely contain, so the check compares the coarse
loop's best errors (and their ratio and special value) and the local steps' errors of every
group, then the searches' results. Inputs: seeded heavy-tailed blocks of every supported group
size, RaZeR's and a custom special set, fp16 scales with the clip search, NVFP4-RaZeR's E3M3
scales with recover ratios and banned top blocks, already-quantized (exact) values, all-zero
and padded groups, one group per row.

Why at run time: the C loop reproduces torch's own summation orders (razer_search.c), which
depend on how torch was built and on the CPU it dispatches for; the check takes well under a
second, once per process.
"""

from __future__ import annotations

import torch

SPECIAL_SETS = ((5.0, -5.0, 8.0, -8.0), (-7.5, -12.0, 2.5, 9.0))


def _weights(seed: int, gs: int, rows: int = 5, groups: int = 7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, groups, gs, generator=gen) / torch.rand(rows, groups, gs,
                                                                 generator=gen).add(0.05)
    w[0, 0] = 0.0  # an all-zero group
    w[1, 1, :3] = w[1, 1, :3].abs() * 50  # a far positive extreme
    w[2, 3, 1] = -w.abs().max() * 2  # the tensor's absmax: a banned top block
    return w  # 5 x 7 = 35 groups: not a multiple of the 16 lanes, so padding is exercised


def _same_loops(wg, specials, search_mode, snap, extra, unclipped, elementwise) -> bool:
    from qcompiler.formats import razer_search as rs
    from qcompiler.formats.native import razer as native
    from qcompiler.formats.razer import special_ranges

    ranges = special_ranges(specials)
    n, g, _ = wg.shape
    c = rs._Candidates(wg, ranges, 4, search_mode, snap, extra, elementwise)
    w_lanes = native.lanes_weights(wg)
    got = rs._native_coarse(w_lanes, specials, ranges, c, unclipped)
    blk = rs._Block(wg, c.ext)
    want = rs._coarse(blk, specials, ranges, c, unclipped)
    if not (_bits_equal(got.err, want.err) and torch.equal(got["meta"], want["meta"])
            and torch.equal(got["ratio"], want["ratio"])):
        return False
    special = torch.tensor(specials, dtype=torch.float32)[want["meta"]].unsqueeze(-1)
    # at 0.6 x the plain scale many elements pass the special values: about 6 % of the groups'
    # errors change if the compiler fuses dq2 - d * d into one multiply-add
    for factor in (0.6, 0.97, 1.0):
        s = snap(c.plain * factor)
        if not _bits_equal(rs._native_refine(w_lanes, n * g)(s, special),
                           rs._torch_refine(wg, blk, special)(s, special)):
            return False
    return True


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


def matches_torch() -> bool:
    from qcompiler.formats.fp4 import FP4_GRID
    from qcompiler.formats.fp8 import E3M3
    from qcompiler.formats.native.razer import GROUP_SIZES
    from qcompiler.formats.nvfp4 import RECOVER_RATIOS, global_scale, top_blocks, two_level_snap
    from qcompiler.formats.razer import special_ranges
    from qcompiler.formats.razer_search import search, torch_path
    from qcompiler.formats.scale_search import to_fp16_scale

    for gs in GROUP_SIZES:
        for k, specials in enumerate(SPECIAL_SETS):
            wg = _weights(gs + k, gs)
            absmax = wg.abs().amax()
            snap = two_level_snap(E3M3, global_scale(absmax, E3M3.max_value))
            nvfp4_rules = ("clip", snap, (*RECOVER_RATIOS,), top_blocks(wg, absmax), True)
            with torch_path():
                s, _ = search(wg, specials, special_ranges(specials), 4, *nvfp4_rules)
            exact = FP4_GRID.round_values(wg / s.clamp(min=1e-30)) * s
            runs = [(wg, ("clip", to_fp16_scale, (), None, True)),
                    (wg.reshape(-1, 1, gs), ("rtn", to_fp16_scale, (), None, False)),
                    (wg, nvfp4_rules),
                    (exact, ("clip", snap, (*RECOVER_RATIOS,),
                             top_blocks(exact, exact.abs().amax()), True))]
            big = _weights(gs + 7 * k, gs, rows=4096 // gs, groups=32)  # 128..2048 groups
            runs.append((big, ("clip", to_fp16_scale, (), None, True)))
            for x, args in runs:
                if not _same_loops(x, specials, *args):
                    return False
                got = search(x, specials, special_ranges(specials), 4, *args)
                with torch_path():
                    want = search(x, specials, special_ranges(specials), 4, *args)
                if not (torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])):
                    return False
    return True

"""FP4 E2M1: the element format of FP4, MXFP4, NVFP4 and RaZeR.

Sign bit 3, then 2 exponent bits (bias 1) and 1 mantissa bit. Magnitudes of codes 0..7:
0, 0.5, 1, 1.5, 2, 3, 4, 6 (code 1 is the subnormal 0.5); code 8 is -0, redundant (RaZeR reuses
it). Rounding: nearest, ties to the even code (grid.py), e.g. 2.5 -> 2 (code 4), 5 -> 4 (code 6),
0.25 -> 0; the RaZeR scripts send ties to the lower value instead, FORMATS.md allows either.

`decode_e2m1_fp16` is the kernel's decode written in torch: put the 3 magnitude bits at fp16 bits
11..9, the sign at bit 15, reinterpret as fp16 and multiply by 2^14. Normals and the subnormal
come out exact; tests check it against the table.
"""

from __future__ import annotations

import torch

from qcompiler.formats.grid import Grid
from qcompiler.formats.grid_format import SCALE_MODES, GridFormat

FP4_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
FP4_VALUES = FP4_MAGNITUDES + tuple(-m for m in FP4_MAGNITUDES)
NEG_ZERO_CODE = 8


def decode_e2m1_fp16(codes: torch.Tensor) -> torch.Tensor:
    """FP4 codes -> fp16 values by the bit trick (no table lookup)."""
    c = codes.to(torch.int32)
    bits = ((c & 7) << 9) | ((c & 8) << 12)
    bits = torch.where(bits >= 1 << 15, bits - (1 << 16), bits)  # as signed int16
    return bits.to(torch.int16).view(torch.float16) * (2.0 ** 14)


def ambiguous_groups(codes: torch.Tensor, meta: torch.Tensor | None = None,
                     specials: tuple[float, ...] = ()) -> torch.Tensor | None:
    """[N, G] bool: FP4 groups (RaZeR ones when `specials` are given: code 8 = specials[meta])
    that may have an exact encoding other than their own; None if that cannot be ruled out.

    Why it is enough to look at which code magnitudes a group uses: the group's values are c * s
    (c its grid values). Another exact encoding at a storable scale s / t (t != 1) needs every
    c * t on the grid. t must take the smallest |c| onto some grid magnitude g, so t is one of
    g / min|c|, and `_ambiguity_table` tries each against every magnitude present. Storable
    scales (fp16, E4M3/E3M3 times a global scale, powers of two) differ by 2^-11 or more, so a
    float t near such a ratio is that ratio up to rounding, which the table's tolerance covers.
    At the group's own scale the values fix the codes, and canonical_meta the metadata. So an
    unambiguous group is left as it is by the canonical pass, which then skips it.
    """
    if len(set(specials)) != len(specials):
        return None
    used = codes_used(codes)
    pattern = ((used | (used >> 8)) & 0xFE) >> 1  # FP4 magnitude codes 1..7 (either sign)
    if specials and meta is not None:
        pattern |= ((used >> NEG_ZERO_CODE) & 1) << (7 + meta.to(torch.int32))
    key = tuple(float(v) for v in specials)
    size = 1 << (7 + len(key))
    if key not in _AMBIGUOUS:  # [filled in?, ambiguous?] per pattern, filled in as met
        _AMBIGUOUS[key] = (torch.zeros(size, dtype=torch.bool), torch.zeros(size, dtype=torch.bool))
    known, table = _AMBIGUOUS[key]
    seen = torch.bincount(pattern.reshape(-1).cpu(), minlength=size) > 0
    for p in (seen & ~known).nonzero()[:, 0].tolist():
        table[p] = _ambiguous_pattern(p, key)
        known[p] = True
    return table.to(codes.device)[pattern.long()]


def codes_used(codes: torch.Tensor) -> torch.Tensor:
    """[..., gs] 4-bit codes -> [...] int32 with bit c set when code c occurs in the group.

    An OR-reduction without comparisons: each code becomes the int16 1 << c, four of them share
    an int64 word, the words are OR-ed pairwise, then the word's four 16-bit lanes. (Comparing
    and any() over the group costs ~10x more on CPU.)
    """
    gs = codes.shape[-1]
    if gs % 4 or gs & (gs - 1):
        flags = [((codes == c).any(-1).to(torch.int32) << c) for c in range(16)]
        return torch.stack(flags).sum(0, dtype=torch.int32)
    bits = torch.ones(codes.shape, dtype=torch.int16, device=codes.device) << codes.to(torch.int16)
    words = bits.view(torch.int64)
    while words.shape[-1] > 1:
        half = words.shape[-1] // 2
        words = words[..., :half] | words[..., half:]
    w = words[..., 0]
    w = w | (w >> 32)
    w = w | (w >> 16)
    return (w & 0xFFFF).to(torch.int32)


_AMBIGUOUS: dict[tuple[float, ...], tuple[torch.Tensor, torch.Tensor]] = {}


def _ambiguous_pattern(pattern: int, specials: tuple[float, ...]) -> bool:
    """Could a group using these codes (bit c-1: FP4 magnitude code c; bit 7+j: special j) be
    exact at another scale? Conservative: an all-zero group, or ratios within 1e-6 of the grid,
    count as ambiguous."""
    grid = sorted({m for m in FP4_MAGNITUDES if m > 0} | {abs(v) for v in specials})
    present = [FP4_MAGNITUDES[c] for c in range(1, 8) if pattern >> (c - 1) & 1]
    present += [abs(v) for j, v in enumerate(specials) if pattern >> (7 + j) & 1]
    if not present:
        return True
    low = min(present)
    return any(all(any(abs(c * g / low - h) <= 1e-6 * h for h in grid) for c in present)
               for g in grid if abs(g / low - 1.0) > 1e-9)


FP4_GRID = Grid(FP4_VALUES, sign_bit=3, ambiguity=ambiguous_groups)

FP4 = GridFormat(
    name="fp4", bits=4, default_group_size=128, group_sizes=(16, 32, 64, 128, 256),
    scale_type="fp16", has_zero_point=False, role="weight",
    description="FP4 E2M1 with an fp16 scale per group",
    options=(("scale", SCALE_MODES),), grid_def=FP4_GRID)

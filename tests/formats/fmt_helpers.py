"""Shared pieces of the format tests: which formats exist, seeded test weights, and an
independent reading of a QTensor (the values each group may take, from `codebook()` and the
stored scales) so that tests do not just call `_decode` back."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from qcompiler import formats
from qcompiler.formats.fp8 import E3M3, E4M3, e8m0_decode

ALL = formats.names()
# (format, group size) pairs: every allowed group size, plus per-row for per-row formats
CASES = [(n, g) for n in ALL for g in formats.get(n).group_sizes] + [
    (n, None) for n in ALL if formats.get(n).default_group_size is None]
DISTRIBUTIONS = ("normal", "student-t", "sparse", "outlier", "mixed-groups", "positive")


def weights(seed: int, n: int, k: int, dist: str, magnitude: float) -> torch.Tensor:
    """Seeded [n, k] float32 test weights of a given shape family."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen)
    if dist == "student-t":
        chi2 = torch.randn(4, n, k, generator=gen).square().sum(0)  # 4 degrees of freedom
        w = w / (chi2 / 4).sqrt().clamp(min=1e-3)
    elif dist == "sparse":
        w = w * (torch.rand(n, k, generator=gen) < 0.2)
    elif dist == "outlier":
        w[torch.rand(n, k, generator=gen) < 0.01] *= 30
    elif dist == "mixed-groups":  # group magnitudes over 6 decades, along K
        w = w * torch.logspace(-3, 3, k).reshape(1, k)[:, torch.randperm(k, generator=gen)]
    elif dist == "positive":
        w = w.abs()
    return w * magnitude


def group_sizes(name: str) -> list[int | None]:
    return [g for n, g in CASES if n == name]


@st.composite
def weight_case(draw, name: str):
    """(group size, weight) for format `name`, K a multiple of the group size."""
    g = draw(st.sampled_from(group_sizes(name)))
    n = draw(st.integers(1, 4))
    groups = draw(st.integers(1, 3))
    k = (g or 32) * groups
    dist = draw(st.sampled_from(DISTRIBUTIONS))
    magnitude = draw(st.sampled_from((1e-3, 0.05, 1.0, 40.0)))
    return g, weights(draw(st.integers(0, 2**31 - 1)), n, k, dist, magnitude)


def effective_scales(fmt: formats.Format, q: formats.QTensor) -> torch.Tensor:
    """Per-group float32 scale [N, G] as a kernel would read it (incl. the global scale)."""
    if fmt.scale_type == "e4m3":
        s = E4M3.decode(q.scales)
    elif fmt.scale_type == "e3m3":
        s = E3M3.decode(q.scales)
    elif fmt.scale_type == "e8m0":
        s = e8m0_decode(q.scales)
    else:
        s = q.scales.to(torch.float32)
    if q.global_scale is not None:
        s = s * q.global_scale.to(torch.float32)
    return s


def allowed_values(fmt: formats.Format, q: formats.QTensor) -> torch.Tensor:
    """[N, G, C]: every value a group may decode to, codebook x its scale (- zero point)."""
    table = fmt.codebook(**q.opts) if "specials" in q.opts else fmt.codebook()
    n, k = q.shape
    g = k // q.group_size
    if table.dim() == 2:  # RaZeR: one row per special value, chosen by meta
        rows = table[q.meta.long()]  # [N, G, C]
    else:
        rows = table.reshape(1, 1, -1).expand(n, g, -1)
    if q.zeros is not None:
        rows = rows - q.zeros.to(torch.float32).unsqueeze(-1)
    return rows * effective_scales(fmt, q).unsqueeze(-1)

"""dequantize(quantize(codebook values x scale)) gives the input back bit for bit.

Each builder draws random codes per group, forces the codes that pin the group's scale (the grid
extremes, E4M3's 448 for the block that sets NVFP4's global scale, ...) and returns the weight
together with the codes it used, so the test also checks the format found those codes' values.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmt_helpers import group_sizes
from qcompiler import formats
from qcompiler.formats.fp4 import FP4_VALUES
from qcompiler.formats.fp8 import E3M3, E4M3

SETTINGS = settings(max_examples=10, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
N_ROWS, N_GROUPS = 3, 4


def fp16_scales(gen: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Random positive fp16-representable scales over several decades."""
    s = torch.exp(torch.empty(shape).uniform_(-9.0, 4.0, generator=gen))
    return s.to(torch.float16).to(torch.float32)


def random_codes(gen: torch.Generator, values: torch.Tensor, shape: tuple[int, ...],
                 forced: tuple[int, ...]) -> torch.Tensor:
    """Values of random codes [*shape] with the `forced` codes at random positions of each group."""
    codes = torch.randint(0, len(values), shape, generator=gen)
    for i, c in enumerate(forced):
        codes[..., i] = c
    perm = torch.argsort(torch.rand(shape, generator=gen), dim=-1)
    return values[torch.gather(codes, -1, perm)]


def build_grid(fmt: formats.Format, gen: torch.Generator, g: int) -> torch.Tensor:
    """Grid formats with an fp16 scale (fp4, nf4, dint4, pot*, int4-sym): both extremes present."""
    table = fmt.codebook()
    lo, hi = int(table.argmin()), int(table.argmax())
    v = random_codes(gen, table, (N_ROWS, N_GROUPS, g), (lo, hi))
    return v * fp16_scales(gen, (N_ROWS, N_GROUPS, 1))


def build_int_asym(fmt: formats.Format, gen: torch.Generator, g: int) -> torch.Tensor:
    qmax = (1 << fmt.bits) - 1
    q = random_codes(gen, fmt.codebook(), (N_ROWS, N_GROUPS, g), (0, qmax))
    z = torch.randint(0, qmax + 1, (N_ROWS, N_GROUPS, 1), generator=gen).float()
    return (q - z) * fp16_scales(gen, (N_ROWS, N_GROUPS, 1))


def build_razer(fmt: formats.Format, gen: torch.Generator, g: int) -> torch.Tensor:
    """Every group uses its special value (code 8) and the FP4 extreme on the other side."""
    rows = fmt.codebook()  # [4, 16]
    meta = torch.randint(0, rows.shape[0], (N_ROWS, N_GROUPS), generator=gen)
    out = torch.empty(N_ROWS, N_GROUPS, g)
    for n in range(N_ROWS):
        for j in range(N_GROUPS):
            special = float(rows[meta[n, j], 8])
            extreme = 15 if special > 0 else 7  # -6 next to a positive special, +6 otherwise
            out[n, j] = random_codes(gen, rows[meta[n, j]], (g,), (8, extreme))
    return out * fp16_scales(gen, (N_ROWS, N_GROUPS, 1))


def build_two_level(codec, elements: torch.Tensor, gen: torch.Generator, g: int,
                    top_codes: tuple[int, ...]) -> torch.Tensor:
    """NVFP4 family: element codes x codec block scale x power-of-two global scale; block
    [0, 0] has the codec's largest scale and a +-6, so it sets the global scale."""
    table = codec.table()
    finite = table[torch.isfinite(table) & (table > 0)]
    e = finite[torch.randint(0, len(finite), (N_ROWS, N_GROUPS, 1), generator=gen)]
    e[0, 0, 0] = codec.max_value
    v = random_codes(gen, elements, (N_ROWS, N_GROUPS, g), (7,))  # 6 in every block
    v[0, 0] = random_codes(gen, elements, (g,), top_codes)
    glob = 2.0 ** int(torch.randint(-12, 4, (1,), generator=gen))
    return v * e * glob


def build_nvfp4(fmt: formats.Format, gen: torch.Generator, g: int) -> torch.Tensor:
    return build_two_level(E4M3, torch.tensor(FP4_VALUES), gen, g, (7, 15))


def build_nvfp4_razer(fmt: formats.Format, gen: torch.Generator, g: int) -> torch.Tensor:
    # special values off: the codes stay plain FP4 (test_razer covers specials at this footprint)
    return build_two_level(E3M3, torch.tensor(FP4_VALUES), gen, g, (7, 15))


def build_mxfp4(fmt: formats.Format, gen: torch.Generator, g: int) -> torch.Tensor:
    # a +-6 pins the exponent and a +-0.5 keeps the block from being exact one exponent up
    v = random_codes(gen, torch.tensor(FP4_VALUES), (N_ROWS, N_GROUPS, g), (7, 1))
    e = torch.randint(-30, 30, (N_ROWS, N_GROUPS, 1), generator=gen).float()
    return v * torch.exp2(e)


def build_int8(fmt: formats.Format, gen: torch.Generator, g: int) -> torch.Tensor:
    codes = random_codes(gen, torch.arange(-127, 128).float(), (N_ROWS, N_GROUPS, g), (0, 254))
    return codes * fp16_scales(gen, (N_ROWS, N_GROUPS, 1))


def build_fp8(fmt: formats.Format, gen: torch.Generator, g: int) -> torch.Tensor:
    table = E4M3.table()
    finite = table[torch.isfinite(table)]
    top = int((finite == 448).nonzero()[0])
    v = random_codes(gen, finite, (N_ROWS, N_GROUPS, g), (top,))
    return v * fp16_scales(gen, (N_ROWS, N_GROUPS, 1))


BUILDERS = {
    "int4": build_int_asym, "int3": build_int_asym, "int2": build_int_asym,
    "int4-sym": build_grid, "fp4": build_grid, "nf4": build_grid, "dint4": build_grid,
    "pot4": build_grid, "pot3": build_grid, "pot2": build_grid,
    "razer4": build_razer, "razer4-kv": build_razer,
    "nvfp4": build_nvfp4, "nvfp4-razer": build_nvfp4_razer, "mxfp4": build_mxfp4,
    "int8": build_int8, "fp8-e4m3": build_fp8,
}


def test_every_format_has_a_builder():
    assert sorted(BUILDERS) == sorted(formats.names())


@pytest.mark.parametrize("name", formats.names())
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), data=st.data())
def test_codebook_times_scale_is_reproduced_exactly(name, seed, data):
    fmt = formats.get(name)
    g = data.draw(st.sampled_from([x for x in group_sizes(name) if x is not None]))
    gen = torch.Generator().manual_seed(seed)
    w = BUILDERS[name](fmt, gen, g).reshape(N_ROWS, N_GROUPS * g)
    opts = {"granularity": "group"} if fmt.per_row else {}
    for search in ("clip", "rtn"):
        w_hat = fmt.dequantize(fmt.quantize(w, group_size=g, search=search, **opts))
        if not torch.equal(w_hat, w):
            bad = (w_hat != w).nonzero()[0].tolist()
            pytest.fail(f"{name} g{g} {search}: {w[tuple(bad)].item()!r} came back as "
                        f"{w_hat[tuple(bad)].item()!r} at {bad}")

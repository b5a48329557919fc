"""M buckets, config pruning and the untuned defaults."""

from __future__ import annotations

import pytest

from qcompiler.codegen.specialize import (GEMV_MAX_M, M_BUCKETS, DeviceLimits, KernelConfig,
                                          KernelKind, Why, candidates, default_config,
                                          kind_for, m_bucket, make_spec, prune)

LLAMA = ((4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096), (4096, 14336))
H100 = DeviceLimits.reference()


def test_buckets_and_families() -> None:
    assert [m_bucket(m) for m in (1, 2, 3, 4, 5, 16, 17, 300)] == [1, 2, 4, 4, 8, 16, 32, 256]
    assert kind_for(GEMV_MAX_M) is KernelKind.GEMV and kind_for(GEMV_MAX_M + 1) is KernelKind.GEMM


def test_prune_rules() -> None:
    spec = make_spec("razer4", 4096, 4096, 128)
    gemm = KernelKind.GEMM
    assert prune(spec, gemm, 64, KernelConfig(64, 64, 64, num_stages=3), H100) is None
    # dot K slice 16 / 2 codes per byte = 8 < 16
    assert prune(spec, gemm, 64, KernelConfig(64, 64, 16), H100).why is Why.DOT_SHAPE
    small = DeviceLimits(num_sms=100, smem_bytes=99 * 1024)
    big = prune(spec, gemm, 256, KernelConfig(256, 256, 128, num_stages=4), small)
    assert big.why is Why.SHARED_MEMORY and "101376" in str(big)
    odd = make_spec("int4", 64, 96 * 4, 96)  # group 96 is no power of two
    assert prune(odd, KernelKind.GEMV, 1, KernelConfig(1, 32, 64), H100).why is Why.GROUP
    fitted = default_config(odd, KernelKind.GEMV, 1, H100)
    assert fitted.block_k == 32 and prune(odd, KernelKind.GEMV, 1, fitted, H100) is None
    assert prune(spec, KernelKind.GEMV, 4, KernelConfig(4, 64, 1024), H100).why is Why.REGISTERS


@pytest.mark.parametrize("fmt,g", [("razer4", 128), ("int3", 64), ("nvfp4", 16), ("mxfp4", 32),
                                   ("int2", 32)])
def test_every_bucket_has_valid_candidates_for_llama_shapes(fmt: str, g: int) -> None:
    for n, k in LLAMA:
        spec = make_spec(fmt, n, k, g)
        for b in M_BUCKETS:
            kind = kind_for(b)
            found = candidates(spec, kind, b, H100)
            assert 1 <= len(found) <= 40, (n, k, b, len(found))
            assert found[0] == default_config(spec, kind, b, H100)
            for cfg in found:
                why = prune(spec, kind, b, cfg, H100)
                assert why is None, (cfg, why)


@pytest.mark.parametrize("fmt,g", [("int4", 128), ("nf4", 64), ("mxfp4", 32), ("nvfp4-razer", 16)])
def test_gemm16_never_gets_32_columns_per_warp(fmt: str, g: int) -> None:
    """Triton 3.9 cannot lower gemm16's wgmma with 32 weight rows per warp ("Illegal shared
    layout": BLOCK_N 128 / 4 warps, 256 / 8 warps); prune rejects them, 16 and 64 pass, and
    the fp32 GEMM of other formats (which compiles them) keeps them."""
    spec = make_spec(fmt, 4096, 14336, g)
    gemm = KernelKind.GEMM
    for bn, nw in ((128, 4), (256, 8)):
        for bk in (64, 128):
            why = prune(spec, gemm, 256, KernelConfig(64, bn, bk, 1, 8, nw, 3), H100)
            assert why is not None and why.why is Why.LAYOUT and "Illegal shared layout" in str(why)
    for bn, nw in ((256, 4), (128, 8), (64, 4)):
        assert prune(spec, gemm, 256, KernelConfig(64, bn, 128, 1, 8, nw, 3), H100) is None
    for n, k in LLAMA:
        spec = make_spec(fmt, n, k, g)
        for b in M_BUCKETS:
            if kind_for(b) is gemm:
                assert all(c.block_n != 32 * c.num_warps for c in candidates(spec, gemm, b, H100))
    int3 = make_spec("int3", 4096, 14336, 128)
    assert prune(int3, gemm, 256, KernelConfig(64, 128, 128, 1, 8, 4, 3), H100) is None


def test_decode_default_fills_the_gpu() -> None:
    cfg = default_config(make_spec("razer4", 4096, 11008, 128), KernelKind.GEMV, 1, H100)
    programs = -(-4096 // cfg.block_n) * cfg.split_k
    assert programs >= 2 * H100.num_sms and cfg.split_k > 1
    tiny = default_config(make_spec("razer4", 48, 64, 32), KernelKind.GEMV, 1,
                          DeviceLimits.interpreter())
    assert prune(make_spec("razer4", 48, 64, 32), KernelKind.GEMV, 1, tiny,
                 DeviceLimits.interpreter()) is None


def test_config_json_roundtrip() -> None:
    cfg = KernelConfig(16, 64, 128, 2, 8, 4, 3)
    assert KernelConfig.from_json(cfg.to_json()) == cfg
    assert cfg.as_launch_dict()["BLOCK_K"] == 128

"""The tensor-core GEMM with fp16 decode (codegen/gemm16.py, gemm16_asm.py, gemm16_decode.py).

- The inline PTX cannot run here: its op list is run by the NumPy emulator over every byte
  value (both nibbles), every zero point / RaZeR special index and real group scales (an
  all-zero group included), and must give fp16(reference `dequantize`) bit for bit.
- The pure-Triton decode (what TRITON_INTERPRET runs) is checked the same way through the
  kernel itself: one-hot activations read every decoded weight back.
- The GEMM against a float64 reference on random and outlier-heavy activations, within the
  bound of gemm16.py's docstring.
- nf4 (a float32 table not exact in fp16) decodes to fp16(fp16(v) * scale), checked bit for bit
  against that model for every byte, and within 2 * 2^-11 + 2^-22 relative (2^-25 absolute
  where subnormal) of `dequantize`.
- Default tiles on the Llama-3-8B shape: within issue 12's budget, no register spills.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import triton
from kernel_helpers import quantized

from qcompiler import formats
from qcompiler.codegen import decode16_tables, gemm16, gemm16_asm, gemm16_sim, runtime
from qcompiler.codegen.decode_plan import DecodeFamily, ScaleKind, plan_for
from qcompiler.codegen.specialize import make_spec
from qcompiler.formats import fp8
from qcompiler.formats.base import QTensor

GEMM16 = ("int4", "int4-sym", "fp4", "razer4", "pot4", "dint4", "mxfp4", "nvfp4", "nvfp4-razer",
          "nf4")
U = 2.0 ** -11  # fp16's unit roundoff
interpret = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                               reason="runs the kernels on Triton's interpreter")


def test_supported_formats() -> None:
    """Every 4-bit weight format with a bit-arithmetic or byte-table decode (nf4 included);
    the other widths keep the fp32 GEMM."""
    ok = {f for f in formats.names() if formats.get(f).role in ("weight", "both")
          and gemm16.supported(plan_for(f))}
    assert ok == set(GEMM16)


def _all_bytes(name: str, seed: int = 0) -> QTensor:
    """A real quantization whose codes are replaced so every row holds every byte value;
    random zero points / special indices; row 1's first group is all zero (scale 0)."""
    fmt = formats.get(name)
    g = fmt.default_group_size or 128
    n, k = 8, max(512, 2 * g)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * torch.logspace(-3, 1, n)[:, None]
    w[1, :g] = 0.0
    q = fmt.quantize(w, group_size=g, search="rtn")
    t = dict(q.tensors())
    if "zeros" in t:
        t["zeros"] = torch.randint(0, 16, t["zeros"].shape, generator=gen, dtype=torch.uint8)
    if "meta" in t:
        t["meta"] = torch.randint(0, 4, t["meta"].shape, generator=gen, dtype=torch.uint8)
    codes = (torch.arange(k // 2) * 37 + 11 * torch.arange(n)[:, None]) % 256
    t["codes"] = codes.to(torch.uint8)
    return QTensor.from_tensors(q.format, q.shape, g, t, q.opts)


def _scale_input(plan, q: QTensor) -> np.ndarray:
    """The fp16 scale the kernel passes per group (gemm16.SCALE)."""
    raw = q.scales
    if plan.scale is ScaleKind.FLOAT:
        return raw.to(torch.float16).numpy()
    if plan.scale is ScaleKind.E8M0:
        return (2.0 ** (raw.to(torch.float64) - 127)).to(torch.float16).numpy()
    codec = getattr(fp8, formats.get(q.format).scale_type.upper())  # E4M3 / E3M3
    unbias = dict(plan.scale_params)["UNBIAS"]  # 2^u; the kernel folds s * 2^(14 - u)
    value = codec.table().to(torch.float64)[raw.long()]
    return (value * 2.0 ** 14 / unbias).to(torch.float16).numpy()


def _aux_input(plan, q: QTensor) -> np.ndarray:
    p = dict(plan.params)
    if gemm16_asm.aux_input(plan) == "aux":
        z = q.zeros.numpy().astype(np.int64) if q.zeros is not None else 0
        return ((0x6400 + p["OFFSET"] + z) * 0x10001 + np.zeros(q.scales.shape, np.int64)
                ).astype(np.uint32)
    if gemm16_asm.aux_input(plan) == "meta":
        return q.meta.numpy().astype(np.uint32)
    return np.zeros(q.scales.shape, np.uint32)


def _post(plan, q: QTensor) -> float:
    """What the kernel multiplies the fp32 accumulator by after the loop."""
    post = dict(plan.scale_params)["UNBIAS"] if gemm16_asm.folds_scale(plan) else 1.0
    return post * (float(q.global_scale) if q.global_scale is not None else 1.0)


def _nf4_model(plan, q: QTensor) -> torch.Tensor:
    """fp16(fp16(v) * s) per weight: the table rounded to fp16 (the asm's byte tables), times
    the fp16 scale, rounded once."""
    table = torch.tensor(decode16_tables.code_values(plan), dtype=torch.float32).to(torch.float16)
    n, k = q.shape
    codes = torch.stack([q.codes & 15, q.codes >> 4], -1).reshape(n, k).long()
    s = q.scales.to(torch.float16).repeat_interleave(q.group_size, dim=1)
    return (table[codes].double() * s.double()).to(torch.float16)


def _check_decoded(plan, q: QTensor, decoded: torch.Tensor) -> None:
    """decoded (fp16 [N, K]) * post == reference: fp16(reference) exactly when nothing is
    left for the accumulator; with a per-tensor fp32 scale (nvfp4), the fp16 weight is the
    exact v * s * 2^-8 and the product with the fp32 post factor is the reference within
    fp32 rounding (2^-23 relative). nf4: fp16(fp16(v) * s) exactly, which is within
    2u + u^2 relative of v * s (two roundings; 2^-25 absolute where the product is subnormal)
    and the float32 reference within 2^-24 more."""
    ref = formats.get(q.format).dequantize(q)
    post = _post(plan, q)
    if gemm16_asm.rounds_values(plan):
        torch.testing.assert_close(decoded.float() + 0.0, _nf4_model(plan, q).float() + 0.0,
                                   rtol=0, atol=0)
        err = (decoded.double() - ref.double()).abs()
        assert (err <= (2 * U + U * U + 2.0 ** -24) * ref.double().abs() + 2.0 ** -25).all()
        assert (decoded.float() != ref.to(torch.float16).float()).any()  # not fp16(reference)
        return
    if post == 1.0:
        torch.testing.assert_close(decoded.float() + 0.0, ref.to(torch.float16).float() + 0.0,
                                   rtol=0, atol=0)
    else:
        torch.testing.assert_close(decoded.double() * post, ref.double(), rtol=2.0 ** -23,
                                   atol=0)


@pytest.mark.parametrize("name", GEMM16)
def test_asm_decode_is_exact_for_every_byte(name: str) -> None:
    plan = plan_for(name)
    q = _all_bytes(name)
    assert torch.zeros(256).index_fill_(0, q.codes.flatten().long(), 1).all()
    words = q.codes.numpy().view(np.uint32)  # [N, K/8], little-endian as the kernel loads
    per_word = q.group_size // 8
    s = np.repeat(_scale_input(plan, q), per_word, axis=1)
    aux = np.repeat(_aux_input(plan, q), per_word, axis=1)
    decoded = gemm16_sim.emulate(plan, words, aux, s).reshape(q.shape)
    _check_decoded(plan, q, torch.from_numpy(decoded.copy()))


@pytest.mark.parametrize("name", ["int4", "razer4", "nvfp4-razer", "dint4", "nf4"])
def test_ptx_reads_only_its_operands(name: str) -> None:
    """Operands $0-$7 are written, the inputs read, nothing else referenced; every register
    the body uses is declared."""
    asm, cons = gemm16_asm.ptx(plan_for(name))
    n = len(cons.split(","))
    assert cons.startswith("=h," * 8)
    used = {int(v) for v in re.findall(r"\$(\d+)", asm)}
    assert used == set(range(n))
    decl = next(line for line in asm.splitlines() if line.startswith(".reg .b32"))
    assert "$" not in decl


def test_razer_decode_has_no_table_load_or_branch() -> None:
    """RaZeR's special value: one set.eq + one fma per code pair, the special pair looked up
    once per word from the 2-bit metadata in registers (no memory, no branch)."""
    asm, _ = gemm16_asm.ptx(plan_for("razer4"))
    assert "ld." not in asm and "bra" not in asm and "@" not in asm
    assert asm.count("set.eq.f16x2") == 4 and asm.count("fma.rn.f16x2") == 4
    assert asm.count("mul.rn.f16x2") == 8  # +-2^14, then the fp16 group scale
    nv_asm, _ = gemm16_asm.ptx(plan_for("nvfp4-razer"))
    assert nv_asm.count("mul.rn.f16x2") == 4  # E4M3 * 2^6 folded into the sign multiplier


def test_nf4_decode_is_byte_tables() -> None:
    """nf4: 4 codes per `prmt` per 8-entry byte table (fp16 high / low bytes of codes 0-7 and
    8-15), merged by the code's bit 3 (one lop3 per byte plane), spread into fp16x2 pairs by 2
    `prmt`; no load, branch or select; 25 instructions per 8 codes (4 of them the scale); the
    4 table words a `prmt` cannot take as an immediate come in as operands (opaque_tables)."""
    plan = plan_for("nf4")
    asm, cons = gemm16_asm.ptx(plan)
    body = [ln for ln in asm.splitlines() if not ln.startswith(("{", "}", ".reg", "mov."))]
    ops = [ln.split()[0] for ln in body]
    assert ops.count("prmt.b32") == 14 and ops.count("lop3.b32") == 4
    assert ops.count("mul.rn.f16x2") == 4 and len(ops) == 25, ops
    assert "ld." not in asm and "bra" not in asm and "@" not in asm and "selp" not in asm
    assert [r for r, _ in gemm16_asm.opaque_tables(plan)] == ["ha0", "hb0", "la0", "lb0"]
    assert cons.count("r") == 1 + 4 and gemm16_asm.rounds_values(plan)


def _module(name: str, n: int, k: int, g: int):
    return runtime.module_for(make_spec(name, n, k, g))


@interpret
@pytest.mark.parametrize("name", GEMM16)
def test_triton_decode_is_exact_for_every_byte(name: str) -> None:
    """The interpreter's decode (USE_ASM=False), read back through the GEMM with one-hot
    activations: y[k, n] = W[n, k] (fp32 accumulation of one exact product)."""
    plan = plan_for(name)
    q = _all_bytes(name)
    n, k = q.shape
    module = _module(name, n, k, q.group_size)
    eye = torch.eye(k, dtype=torch.float16)
    cfg = dict(BLOCK_M=64, BLOCK_N=8, BLOCK_K=min(128, 2 * q.group_size), SPLIT_K=1, GROUP_M=1,
               num_warps=4, num_stages=2)
    if gemm16_asm.folds_scale(plan):  # post != 1: read the fp16 weights before the fp32 post
        y = module.gemm(eye, q.tensors(), config=cfg).double() / _post(plan, q)
        ref = formats.get(name).dequantize(q).double() / _post(plan, q)
        torch.testing.assert_close(y.T, ref, rtol=2.0 ** -10, atol=2.0 ** -24)
        return
    y = module.gemm(eye, q.tensors(), config=cfg)
    _check_decoded(plan, q, y.T)


def _bound(x: torch.Tensor, w: torch.Tensor, y_ref: torch.Tensor, weight_err: float = U,
           ) -> torch.Tensor:
    """gemm16.py's bound: each weight is within `weight_err` relative of w (fp16(w): 2^-11;
    nf4: 2u + u^2 + 2^-24, plus 2^-25 absolute per subnormal weight, covered by the constant),
    products are exact in the fp32 accumulator, which adds at most K * 2^-24 of sum|x w|, and
    y rounds to fp16 once."""
    k = x.shape[1]
    mag = x.abs().double() @ w.abs().double().T
    sub = 2.0 ** -25 * x.abs().double().sum(1, keepdim=True)
    return (weight_err + k * 2.0 ** -24) * mag + 2.0 ** -11 * y_ref.abs() + sub + 2.0 ** -24


@interpret
@pytest.mark.parametrize("name,n,k,g", [("int4", 40, 256, 64), ("razer4", 33, 256, 128),
                                        ("mxfp4", 50, 192, 32), ("nvfp4-razer", 24, 160, 16),
                                        ("pot4", 17, 128, 32), ("dint4", 32, 256, 128),
                                        ("nf4", 48, 256, 64)])
@pytest.mark.parametrize("outliers", [False, True])
def test_gemm_vs_float64(name: str, n: int, k: int, g: int, outliers: bool) -> None:
    q, w = quantized(name, n, k, g, seed=3)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(21, k, generator=gen)
    if outliers:  # a few activation channels 100-1000x larger (LLM-style outlier features)
        cols = torch.randperm(k, generator=gen)[:4]
        x[:, cols] *= torch.tensor([100.0, -300.0, 1000.0, 500.0])
    x = x.to(torch.float16)
    module = _module(name, n, k, g)
    assert module.GEMM_KERNEL is module.GEMM16_KERNEL
    y = module.gemm(x, q.tensors())
    ref = x.double() @ w.double().T
    err = (y.double() - ref).abs()
    werr = 2 * U + U * U + 2.0 ** -24 if gemm16_asm.rounds_values(plan_for(name)) else U
    bound = _bound(x, w, ref, werr)
    assert (err <= bound).all(), float((err / bound).max())


@interpret
def test_qc_gemm_fp32_selects_the_old_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """QC_GEMM=fp32 runs the fp32-decode GEMM (kept for comparisons on a GPU)."""
    q, w = quantized("razer4", 16, 128, 64, seed=1)
    module = _module("razer4", 16, 128, 64)
    x = torch.randn(8, 128, generator=torch.Generator().manual_seed(2)).to(torch.float16)
    calls = []
    real = module._launch
    monkeypatch.setattr(module, "_launch", lambda kernel, *a, **kw: calls.append(kernel)
                        or real(kernel, *a, **kw))
    module.gemm(x, q.tensors())
    monkeypatch.setenv("QC_GEMM", "fp32")
    y = module.gemm(x, q.tensors())
    assert calls == [module.GEMM16_KERNEL, module.GEMM_FP32_KERNEL]
    ref = x.double() @ w.double().T
    assert ((y.double() - ref).abs() <= 2.0 ** -9 * (x.abs().double() @ w.abs().double().T)
            + 1e-3).all()


def test_family_of_every_supported_format() -> None:
    fams = {f: plan_for(f).family for f in GEMM16}
    assert fams["dint4"] is DecodeFamily.TABLE and fams["pot4"] is DecodeFamily.POT


GEMM16_SASS = """
import sys
from qcompiler import formats
from qcompiler.codegen import runtime
from qcompiler.codegen.aot import compile_kernel
from qcompiler.codegen.specialize import DeviceLimits, KernelKind, default_config, make_spec
for name in sys.argv[2:]:
    f = formats.get(name)
    spec = make_spec(name, 4096, 14336, 128 if 128 in f.group_sizes else f.default_group_size)
    cfg = default_config(spec, KernelKind.GEMM, int(sys.argv[1]), DeviceLimits.reference())
    c = compile_kernel(runtime.module_for(spec), "gemm", cfg.as_launch_dict(), sass=True)
    ops = [s.split()[0] if not s.startswith("@") else s.split()[1] for s in c.loop_sass]
    print(c.kernel, c.loop_instructions / c.codes_per_thread,
          sum(o.startswith("HGMMA") for o in ops), c.local_memory,
          sum(o.startswith("LDSM") for o in ops))
"""


def _sass(m: int, *names: str) -> list[list[str]]:
    """(kernel, instructions per code, HGMMA count, LDL/STL count, LDSM count) per format, of
    the default M-bucket GEMM tile on the Llama-3-8B down_proj shape (a real sm_90 compile)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONWARNINGS"] = "ignore"
    proc = subprocess.run([sys.executable, "-c", GEMM16_SASS, str(m), *names],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [line.split() for line in proc.stdout.splitlines()]


NVDISASM = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"


@pytest.mark.skipif(not NVDISASM.is_file(), reason="no nvdisasm (triton's NVIDIA backend)")
def test_razer4_gemm16_sass_budget() -> None:
    """Issue 12's M = 16 budget on the Llama-3-8B down_proj shape: razer4 <= 6 SASS
    instructions per code in the hot loop (wgmma included), no spills, and the weight tile is
    a shared-memory MMA operand (no ldmatrix round trip)."""
    [(name, per_code, hgmma, spills, ldsm)] = _sass(16, "razer4")
    assert name == "qc_razer4_gemm16_n4096_k14336_g128"
    assert float(per_code) <= 6.0 and int(hgmma) > 0 and int(spills) == 0 and int(ldsm) == 0


@pytest.mark.slow
@pytest.mark.skipif(not NVDISASM.is_file(), reason="no nvdisasm (triton's NVIDIA backend)")
@pytest.mark.parametrize("m", [16, 256])
def test_table_and_razer_default_tiles_do_not_spill(m: int) -> None:
    """The formats whose decode needs the most registers (dint4, nf4: table words; the RaZeR
    formats: the special-value table) at their default tiles (specialize.GEMM16_BLOCK_K):
    within the budget, wgmma, and no local-memory instruction anywhere in the kernel. The
    weight tile is no ldmatrix round trip (that would take >= 16 LDSM per thread and
    iteration: 256 x 64 fp16 over 128 threads, 16 bytes each); nvfp4-razer's BLOCK_K 64 tile
    has 2 LDSM.16.M88.2 from a small layout conversion."""
    rows = _sass(m, "dint4", "nf4", "razer4", "nvfp4-razer")
    assert [r[0].split("_")[1] for r in rows] == ["dint4", "nf4", "razer4", "nvfp4"]
    for name, per_code, hgmma, spills, ldsm in rows:
        assert "_gemm16_" in name and int(hgmma) > 0, name
        assert float(per_code) <= 6.0 and int(spills) == 0 and int(ldsm) <= 2, (name, per_code,
                                                                                spills, ldsm)

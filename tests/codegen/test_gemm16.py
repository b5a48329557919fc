"""The tensor-core GEMM with fp16 decode (codegen/gemm16.py, gemm16_asm.py, gemm16_decode.py).

- The inline PTX cannot run here: its op list is run by the NumPy emulator over every byte
  value (both nibbles), every zero point / RaZeR special index and real group scales (an
  all-zero group included), and must give fp16(reference `dequantize`) bit for bit.
- The pure-Triton decode (what TRITON_INTERPRET runs) is checked the same way through the
  kernel itself: one-hot activations read every decoded weight back.
- The GEMM against a float64 reference on random and outlier-heavy activations, within the
  bound of gemm16.py's docstring.
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
from qcompiler.codegen import gemm16, gemm16_asm, gemm16_sim, runtime
from qcompiler.codegen.decode_plan import DecodeFamily, ScaleKind, plan_for
from qcompiler.codegen.specialize import make_spec
from qcompiler.formats import fp8
from qcompiler.formats.base import QTensor

GEMM16 = ("int4", "int4-sym", "fp4", "razer4", "pot4", "dint4", "mxfp4", "nvfp4", "nvfp4-razer")
interpret = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                               reason="runs the kernels on Triton's interpreter")


def test_supported_formats() -> None:
    """Every 4-bit weight format with a bit-arithmetic decode; nf4 (its table is not exact in
    fp16) and the other widths keep the fp32 GEMM."""
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


def _check_decoded(plan, q: QTensor, decoded: torch.Tensor) -> None:
    """decoded (fp16 [N, K]) * post == reference: fp16(reference) exactly when nothing is
    left for the accumulator; with a per-tensor fp32 scale (nvfp4), the fp16 weight is the
    exact v * s * 2^-8 and the product with the fp32 post factor is the reference within
    fp32 rounding (2^-23 relative)."""
    ref = formats.get(q.format).dequantize(q)
    post = _post(plan, q)
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


@pytest.mark.parametrize("name", ["int4", "razer4", "nvfp4-razer", "dint4"])
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


def _bound(x: torch.Tensor, w: torch.Tensor, y_ref: torch.Tensor) -> torch.Tensor:
    """gemm16.py's bound: each weight is fp16(w) (2^-11 relative), products are exact in the
    fp32 accumulator, which adds at most K * 2^-24 of sum|x w|, and y rounds to fp16 once."""
    k = x.shape[1]
    mag = x.abs().double() @ w.abs().double().T
    return (2.0 ** -11 + k * 2.0 ** -24) * mag + 2.0 ** -11 * y_ref.abs() + 2.0 ** -24


@interpret
@pytest.mark.parametrize("name,n,k,g", [("int4", 40, 256, 64), ("razer4", 33, 256, 128),
                                        ("mxfp4", 50, 192, 32), ("nvfp4-razer", 24, 160, 16),
                                        ("pot4", 17, 128, 32), ("dint4", 32, 256, 128)])
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
    assert (err <= _bound(x, w, ref)).all(), float((err / _bound(x, w, ref)).max())


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
from qcompiler.codegen import runtime
from qcompiler.codegen.aot import compile_kernel
from qcompiler.codegen.specialize import DeviceLimits, KernelKind, default_config, make_spec
spec = make_spec(sys.argv[1], 4096, 14336, 128)
cfg = default_config(spec, KernelKind.GEMM, 16, DeviceLimits.reference()).as_launch_dict()
c = compile_kernel(runtime.module_for(spec), "gemm", cfg, sass=True)
ops = [s.split()[0] if not s.startswith("@") else s.split()[1] for s in c.loop_sass]
print(c.kernel, c.loop_instructions / c.codes_per_thread, sum(o.startswith("HGMMA") for o in ops),
      sum(o.startswith(("LDL", "STL")) for o in ops), sum(o.startswith("LDSM") for o in ops))
"""


NVDISASM = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"


@pytest.mark.skipif(not NVDISASM.is_file(), reason="no nvdisasm (triton's NVIDIA backend)")
def test_razer4_gemm16_sass_budget() -> None:
    """Issue 12's M = 16 budget on the Llama-3-8B down_proj shape: razer4 <= 6 SASS
    instructions per code in the hot loop (wgmma included), no spills, and the weight tile is
    a shared-memory MMA operand (no ldmatrix round trip)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONWARNINGS"] = "ignore"
    proc = subprocess.run([sys.executable, "-c", GEMM16_SASS, "razer4"], capture_output=True,
                          text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    name, per_code, hgmma, spills, ldsm = proc.stdout.split()
    assert name == "qc_razer4_gemm16_n4096_k14336_g128"
    assert float(per_code) <= 6.0 and int(hgmma) > 0 and int(spills) == 0 and int(ldsm) == 0

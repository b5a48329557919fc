"""The fp16x2 decode programs (codegen/decode16.py): exact decodes, and the dot's error bound.

The inline PTX cannot run here, so its bit semantics are checked through the NumPy emulator of
the same op list (decode16_sim.emulate), exhaustively: every byte value (both nibbles of every
code pair), every zero point / RaZeR special value, against each format's reference
`dequantize` with real group scales. The Triton twin (what the interpreter runs) is checked
against the emulator bit for bit, so interpreter kernel tests cover the asm's logic too.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from qcompiler import formats
from qcompiler.codegen import decode16, runtime
from qcompiler.codegen import decode16_tables as tables
from qcompiler.codegen.decode16_sim import emulate, lanes, triton_source, twin_name
from qcompiler.codegen.decode_plan import DecodeFamily, plan_for
from qcompiler.formats.base import QTensor

FP16X2 = ("int4", "int4-sym", "fp4", "razer4", "pot4", "dint4", "mxfp4", "nvfp4", "nvfp4-razer",
          "nf4")
U = 2.0 ** -11  # fp16 unit roundoff
# RaZeR with specials that are not one fp16 byte: the set.eq program (decode16._seteq_program)
ODD_SPECIALS = {"specials": [5.5, -5.5, 2.5, -3.25]}


def test_supported_formats() -> None:
    """Every 4-bit weight format has an fp16x2 decode: int by the magic number, the
    sign-magnitude ones (E2M1, pot4, dint4) by a byte table, nf4 by a 16-entry two-byte table."""
    ok = {f for f in formats.names() if formats.get(f).role in ("weight", "both")
          and decode16.supported(plan_for(f))}
    assert ok == set(FP16X2)
    kinds = {f: decode16.program_kind(plan_for(f)) for f in FP16X2}
    assert kinds["razer4"] == kinds["nvfp4-razer"] == "sm-special"
    assert {kinds[f] for f in ("fp4", "mxfp4", "nvfp4", "pot4", "dint4")} == {"sm"}
    assert kinds["nf4"] == "table16" and tables.rounds_values(plan_for("nf4"))
    assert decode16.program_kind(plan_for("razer4", ODD_SPECIALS)) == "e2m1-seteq"


def test_program_sizes() -> None:
    """Instructions per 8-code word: RaZeR costs two more than fp4 and as many as int4 + 2."""
    size = {f: len(decode16.word_program(plan_for(f))) for f in ("int4-sym", "fp4", "razer4",
                                                                  "nf4")}
    assert size == {"int4-sym": 17, "fp4": 17, "razer4": 19, "nf4": 25}
    assert len(decode16.group_program(plan_for("razer4"))) == 2  # once per group


@pytest.mark.parametrize("name", FP16X2)
@pytest.mark.parametrize("words_per_group", [2, 4])
def test_ptx_operands_match_constraints(name: str, words_per_group: int) -> None:
    """The asm declares only its own registers (an operand like $32 declared as a local would
    shadow the input and read garbage) and reads each operand the constraints provide."""
    asm, cons = decode16.ptx(plan_for(name), words_per_group)
    n_ops = len(cons.split(","))
    decl = next(line for line in asm.splitlines() if line.startswith(".reg .b32"))
    assert "$" not in decl
    used = {int(m) for m in re.findall(r"\$(\d+)", asm)}
    assert used <= set(range(n_ops)) and max(used) >= n_ops - 4, (sorted(used), n_ops)
    groups = {(r - 4) // 4 for r in used if r >= 4}  # every input (4 registers each) is read
    assert groups == set(range((n_ops - 4) // 4)) and set(range(4)) <= used
    declared = set(decl.removeprefix(".reg .b32").strip(" ;").split(", "))
    declared |= {"lo16", "hi16", "flo", "fhi"}
    for line in asm.splitlines()[4:-1]:
        for stmt in filter(None, (st.strip() for st in line.split(";"))):
            regs = re.findall(r"(?<![$\w.%])([a-z][a-z0-9]*)\b", stmt.split(None, 1)[1])
            assert set(regs) <= declared, stmt


def _aux(plan, q: QTensor) -> np.ndarray:
    """The per-group operand the kernel passes: 1024 + zero + offset (fp16x2), or RaZeR's
    metadata / special operand (decode16.aux_words)."""
    p = dict(plan.params)
    shape = q.scales.shape
    if plan.family is DecodeFamily.INT:
        z = q.zeros.numpy().astype(np.int64) if q.zeros is not None else np.zeros(shape, np.int64)
        return ((0x6400 + p["OFFSET"] + z) * 0x10001).astype(np.uint32)
    if decode16.has_aux(plan):
        words = np.array(decode16.aux_words(plan), np.uint64)
        return words[q.meta.numpy().astype(np.int64)].astype(np.uint32)
    return np.zeros(shape, np.uint32)


def _decode_all(plan, q: QTensor) -> np.ndarray:
    """Every code of q decoded by the emulated program (one-hot activations): fp16 [N, K]."""
    n, k = q.shape
    words = q.codes.numpy().view(np.uint32)  # [N, K/8]; little-endian, as the kernel loads
    aux = np.repeat(_aux(plan, q), q.group_size // 8, axis=1)  # per word
    out = np.zeros((n, k // 8, 8), np.float16)
    for pair in range(4):
        x = np.zeros((n, k // 8, 8), np.float16)
        x[..., 2 * pair: 2 * pair + 2] = 1.0
        lo, hi = lanes(emulate(plan, words, x, aux))
        out[..., 2 * pair], out[..., 2 * pair + 1] = lo, hi
    return out.reshape(n, k)


def _quantized_all_bytes(name: str, seed: int = 0, opts: dict | None = None) -> QTensor:
    """A real quantization whose codes are then replaced: every byte value in every row, and
    the first byte of each group = the code of 1.0 twice (to read the group scale back)."""
    fmt = formats.get(name)
    g = fmt.default_group_size or 128
    n, k = 8, 16 * max(g, 128)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * torch.logspace(-3, 1, n)[:, None]
    w[1, :g] = 0.0  # an all-zero group: scale 0
    q = fmt.quantize(w, group_size=g, search="rtn", **(opts or {}))
    t = dict(q.tensors())
    if "zeros" in t:
        t["zeros"] = torch.randint(0, 15, t["zeros"].shape, generator=gen, dtype=torch.uint8)
    if "meta" in t:
        t["meta"] = torch.randint(0, 4, t["meta"].shape, generator=gen, dtype=torch.uint8)
    codes = (torch.arange(k // 2) * 37 + 11 * torch.arange(n)[:, None]) % 256
    q = QTensor.from_tensors(q.format, q.shape, g, {**t, "codes": codes.to(torch.uint8)}, q.opts)
    one = _code_of_one(q)
    codes[:, ::g // 2] = (one | (one << 4)).to(codes.dtype)
    return QTensor.from_tensors(q.format, q.shape, g, {**t, "codes": codes.to(torch.uint8)}, q.opts)


def _code_of_one(q: QTensor) -> torch.Tensor:
    """Per group, a code whose value is 1.0 ([N, groups] int64)."""
    fmt = formats.get(q.format)
    if q.zeros is not None:
        return q.zeros.to(torch.int64) + 1
    cb = fmt.codebook(**q.opts)
    row = cb[0] if cb.dim() == 2 else cb
    return torch.full(q.scales.shape, int((row == 1.0).nonzero()[0]), dtype=torch.int64)


CASES = [(f, None) for f in FP16X2] + [("razer4", ODD_SPECIALS)]


@pytest.mark.parametrize("name,opts", CASES, ids=[f + ("-odd" if o else "") for f, o in CASES])
def test_decode_is_exact_for_every_byte(name: str, opts: dict | None) -> None:
    """dequantize(q) == fp32(decoded fp16 code value) * group scale, for every byte value
    (all 256, each in many groups), zero point, special value and scale, bit for bit
    (+0 and -0 compare equal: the sign of a zero cannot change a dot product). nf4's float32
    table is not exact in fp16: its decode is checked to be exactly fp16(table value), which
    is within 2^-11 relative of the reference (the dot's bound adds that term)."""
    plan = plan_for(name, opts)
    q = _quantized_all_bytes(name, opts=opts)
    seen = torch.zeros(256, dtype=torch.bool)
    seen[q.codes.flatten().long()] = True
    assert seen.all()
    ref = formats.get(name).dequantize(q)
    decoded = torch.from_numpy(_decode_all(plan, q).astype(np.float32))
    g = q.group_size
    scale = ref[:, ::g].repeat_interleave(g, dim=1)  # value of the 1.0 code: the group scale
    if not tables.rounds_values(plan):
        torch.testing.assert_close(decoded * scale + 0.0, ref + 0.0, rtol=0, atol=0)
        return
    codes = torch.stack([q.codes & 15, q.codes >> 4], dim=-1).reshape(q.shape).long()
    table = formats.get(name).codebook(**q.opts)
    want = table.to(torch.float16).to(torch.float32)[codes]
    torch.testing.assert_close(decoded, want, rtol=0, atol=0)
    err = (decoded * scale - ref).abs()
    assert (err <= U * ref.abs()).all()


@pytest.mark.parametrize("name,opts", [("razer4", None), ("int4", None), ("fp4", None),
                                       ("nf4", None), ("razer4", ODD_SPECIALS)])
def test_twin_matches_emulator_bit_for_bit(name: str, opts: dict | None, tmp_path: Path) -> None:
    """The Triton twin (interpreter path) computes the same fp16x2 register as the asm's ops."""
    plan = plan_for(name, opts)
    gen = np.random.default_rng(0)
    n = 64
    words = gen.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    x = (gen.standard_normal((n, 8)) * 3).astype(np.float16)
    aux = gen.integers(0, 4, n) if decode16.has_aux(plan) else np.zeros(n, np.int64)
    if plan.family is DecodeFamily.INT:
        aux = ((0x6400 + gen.integers(0, 16, n)) * 0x10001).astype(np.uint32)
    elif decode16.has_aux(plan):
        aux = np.array(decode16.aux_words(plan), np.uint64)[aux].astype(np.uint32)
    want = emulate(plan, words, x, aux.astype(np.uint32))
    want_f32 = np.stack(lanes(want)).astype(np.float32).sum(0)

    run = _twin_runner(plan, tmp_path)
    out = torch.zeros(n, dtype=torch.float32)
    run.run[(1,)](torch.from_numpy(words.view(np.int32)), torch.from_numpy(x),
              torch.from_numpy(aux.astype(np.uint32).view(np.int32)), out, N=n)
    np.testing.assert_array_equal(out.numpy(), want_f32)


RUNNER = """
@triton.jit
def run(w_ptr, x_ptr, aux_ptr, out_ptr, N: tl.constexpr):
    i = tl.arange(0, N)
    xp = x_ptr.to(tl.pointer_type(tl.int32)) + i * 4
    out = TWIN(tl.load(w_ptr + i), tl.load(xp), tl.load(xp + 1), tl.load(xp + 2),
               tl.load(xp + 3), tl.load(aux_ptr + i), tl.full((N,), 1.0, tl.float32),
               tl.zeros((N,), tl.float32))
    tl.store(out_ptr + i, out)
"""


def _twin_runner(plan, tmp_path: Path):
    """A module with the format's twin (the text the emitted files carry) and a tiny kernel
    calling it on one word per lane (Triton reads jit source back from a file)."""
    src = ("import triton\nimport triton.language as tl\n\n\n" + triton_source(plan) + "\n\n"
           + RUNNER.replace("TWIN", twin_name(plan)))
    path = tmp_path / f"twin_{plan.ident}.py"
    path.write_text(src)
    return runtime.import_kernel_file(path)


def dot_bound(absdot: np.ndarray, chunks: int, chain: int = 16,
              rounded: bool = False) -> np.ndarray:
    """|error| bound of the fp16x2 dot: `chain` fp16 roundings per lane (gamma_chain on the sum
    of |products|), then fp32 for the lane sum, the scale and one add per chunk; a table read
    as fp16-rounded values (nf4, `rounded`) adds u per weight (and 2^-24 for the reference's
    own float32 product)."""
    gamma16 = chain * U / (1 - chain * U)
    extra = U + 2.0 ** -24 if rounded else 0.0
    return (gamma16 + (chunks + 3) * 2.0 ** -24 + extra) * absdot


@pytest.mark.parametrize("name", ["int4-sym", "int4", "fp4", "razer4", "pot4", "dint4", "nf4"])
@pytest.mark.parametrize("outliers", [False, True])
def test_dot_within_fp16x2_bound(name: str, outliers: bool) -> None:
    """What the asm computes for one row (emulated: 4-word fp16x2 chains over one group, fp32
    across groups) against float64, on random and outlier-heavy activations."""
    plan = plan_for(name)
    gen = np.random.default_rng(1)
    rows, k, g = 16, 2048, 128
    words = gen.integers(0, 2**32, (rows, k // 8), dtype=np.uint64).astype(np.uint32)
    x = gen.standard_normal(k)
    if outliers:  # a few channels 100-400x larger (LLM-style), kept below fp16 overflow
        idx = gen.choice(k, k // 50, replace=False)
        x[idx] *= gen.uniform(100, 400, idx.size) * gen.choice([-1, 1], idx.size)
    x16 = x.astype(np.float16)
    scale = (gen.standard_normal((rows, k // g)) * 0.02).astype(np.float32)
    q = QTensor.from_tensors(name, (rows, k), g, {
        "codes": torch.from_numpy(words.view(np.uint8).copy()),
        "scales": torch.from_numpy(scale.astype(np.float16)),
        **({"zeros": torch.from_numpy(gen.integers(0, 16, (rows, k // g)).astype(np.uint8))}
           if plan.has_zero else {}),
        **({"meta": torch.from_numpy(gen.integers(0, 4, (rows, k // g)).astype(np.uint8))}
           if plan.has_meta else {})})
    aux = np.repeat(_aux(plan, q), g // 8, axis=1)
    s32 = q.scales.numpy().astype(np.float32)
    y = np.zeros(rows, np.float32)
    xw = x16.reshape(k // 8, 8)
    for c in range(k // 32):  # one asm instance: 4 words, one group
        acc = None
        for j in range(4):
            wi = 4 * c + j
            acc = emulate(plan, words[:, wi], np.broadcast_to(xw[wi], (rows, 8)), aux[:, wi], acc)
        lo, hi = lanes(acc)
        part = lo.astype(np.float32) + hi.astype(np.float32)
        y = (y + part * s32[:, (32 * c) // g]).astype(np.float32)
    v = formats.get(name).dequantize(q).numpy().astype(np.float64)  # the format's values
    ref = v @ x16.astype(np.float64)
    absdot = np.abs(v) @ np.abs(x16.astype(np.float64))
    err = np.abs(y - ref)
    bound = dot_bound(absdot, k // 32, rounded=tables.rounds_values(plan))
    assert np.isfinite(y).all()
    assert (err <= bound).all(), (err / bound).max()

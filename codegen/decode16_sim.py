"""The other two renderings of decode16's op lists: a pure-Triton twin and a NumPy emulator.

Inline PTX cannot run in the Triton interpreter, so the emitted GEMV calls `decode16_<fmt>`
(this module's Triton source) when TRITON_INTERPRET is set and the asm otherwise. Both come from
the same `word_program`, so the interpreter tests exercise the exact bit logic of the asm; the
NumPy `emulate` runs it on whole arrays for the exhaustive tests. Semantics of every op follow
the PTX ISA: `prmt.b32` default mode (a selector nibble with bit 3 set replicates the
selected byte's msb),
`lop3.b32` truth table over (a=0xF0, b=0xCC, c=0xAA), logical shifts, wrapping `sub.u32`, and
f16x2 arithmetic rounding to nearest even per lane. The twin and the emulator compute
`fma.rn.f16x2` as an exact product plus a rounded sum: the decode steps are exact either way
(products by 0, 1 or 2^14, differences of integers below 2048); only the dot's accumulation
may differ from the hardware in its last bit, which the error bound covers.
"""

from __future__ import annotations

import numpy as np

from qcompiler.codegen.decode16 import Op, group_program, setup_program, word_program
from qcompiler.codegen.decode_plan import DecodePlan

def _lut_terms(lut: int, a: str, b: str, c: str, inv: str) -> str:
    """`lop3` as a sum of minterms; `inv` formats the complement of an operand."""
    terms = []
    for i in range(8):
        if lut >> i & 1:
            bits = [(a, i & 4), (b, i & 2), (c, i & 1)]
            terms.append("(" + " & ".join(v if on else inv.format(v) for v, on in bits) + ")")
    return " | ".join(terms) if terms else "0"


# ----------------------------------------------------------------------------- Triton twin


def twin_name(plan: DecodePlan) -> str:
    return f"decode16_{plan.ident}"


def triton_source(plan: DecodePlan) -> str:
    """`decode16_<fmt>(w, x0, x1, x2, x3, aux, scale, acc)`: elementwise over words (int64 lanes).

    Returns acc + scale * (fp16x2 dot of the word's 8 decoded codes with its 8 activations).
    """
    body = []
    for op in setup_program(plan) + group_program(plan) + word_program(plan):
        body += _twin_op(op)
    lines = [
        "@triton.jit",
        f"def {twin_name(plan)}(w, x0, x1, x2, x3, aux, scale, acc):",
        f'    """{plan.format}: the asm decode + fp16x2 dot of one word, in plain Triton ops '
        '(interpreter twin)."""',
        "    w = w.to(tl.int64) & 0xFFFFFFFF",
        "    x0 = x0.to(tl.int64) & 0xFFFFFFFF",
        "    x1 = x1.to(tl.int64) & 0xFFFFFFFF",
        "    x2 = x2.to(tl.int64) & 0xFFFFFFFF",
        "    x3 = x3.to(tl.int64) & 0xFFFFFFFF",
        "    aux = aux.to(tl.int64) & 0xFFFFFFFF",
        "    acc16 = tl.zeros_like(w)",
    ]
    lines += ["    " + ln.replace("acc", "acc16") for ln in body]
    lines += ["    lo = _h16(acc16).to(tl.float32)",
              "    hi = _h16(acc16 >> 16).to(tl.float32)",
              "    return acc + scale * (lo + hi)"]
    return TWIN_HELPERS + "\n\n" + "\n".join(lines) + "\n"


TWIN_HELPERS = '''\
@triton.jit
def _byte(a, b, nib):
    """prmt's byte for selector nibble `nib` of the 8 bytes b:a (bit 3: sign-replicate)."""
    idx = nib & 7
    src = tl.where(idx < 4, a, b)
    byte = (src >> (8 * (idx & 3))) & 0xFF
    return tl.where((nib & 8) != 0, ((byte >> 7) & 1) * 0xFF, byte)


@triton.jit
def _h16(v):
    """Low 16 bits of int64 lanes as fp16."""
    return (v & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def _b16(h):
    """fp16 -> its 16 bits in an int64."""
    return h.to(tl.int16, bitcast=True).to(tl.int64) & 0xFFFF


@triton.jit
def _f16x2(r):
    """(low lane, high lane) of a packed fp16x2 register, as fp32."""
    return _h16(r).to(tl.float32), _h16(r >> 16).to(tl.float32)


@triton.jit
def _pack(lo, hi):
    """Round two fp32 lanes to fp16 (nearest even) and pack them."""
    return _b16(lo.to(tl.float16)) | (_b16(hi.to(tl.float16)) << 16)'''


def _twin_op(op: Op) -> list[str]:
    s = [f"{v}" if isinstance(v, str) else f"{v:#x}" for v in op.srcs]
    d = op.dst
    if op.name == "shl":
        return [f"{d} = ({s[0]} << {op.imm}) & 0xFFFFFFFF"]
    if op.name == "shr":
        return [f"{d} = {s[0]} >> {op.imm}"]
    if op.name == "sub":
        return [f"{d} = ({s[0]} - {s[1]}) & 0xFFFFFFFF"]
    if op.name in ("mov", "movv"):
        return [f"{d} = w * 0 + {s[0]}"]
    if op.name == "prmt" and len(s) == 3:  # selector in a register: per-lane byte gathers
        parts = [f"_byte({s[0]}, {s[1]}, ({s[2]} >> {4 * k}) & 15) << {8 * k}" for k in range(4)]
        return [f"{d} = ({parts[0]} | {parts[1]}", f"     | {parts[2]} | {parts[3]})"]
    if op.name == "prmt":
        parts = []
        for k in range(4):
            nib = (op.imm >> (4 * k)) & 15
            idx = nib & 7
            src, byte = (s[0], idx) if idx < 4 else (s[1], idx - 4)
            if nib & 8:  # sign-replicate mode: the byte's msb, 8 times
                parts.append(f"((({src} >> {8 * byte + 7}) & 1) * {0xFF << (8 * k):#x})")
            else:
                parts.append(f"((({src} >> {8 * byte}) & 0xFF) << {8 * k})")
        return [f"{d} = ({parts[0]} | {parts[1]}", f"     | {parts[2]} | {parts[3]})"]
    if op.name == "lop3":
        known = {0xEA: "({0} & {1}) | {2}", 0xC0: "{0} & {1}", 0xFC: "{0} | {1}",
                 0xCA: "({0} & {1}) | ((~{0} & 0xFFFFFFFF) & {2})"}
        if op.imm in known:
            return [f"{d} = " + known[op.imm].format(*s)]
        expr = _lut_terms(op.imm, "_a", "_b", "_c", "(~{} & 0xFFFFFFFF)")
        return [f"_a, _b, _c = {s[0]}, {s[1]}, {s[2]}", f"{d} = ({expr}) & 0xFFFFFFFF"]
    # f16x2 immediates become tensors (like the asm's staging register)
    lanes = [f"_l{i}, _h{i} = _f16x2({v if isinstance(o, str) else f'(w * 0 + {v})'})"
             for i, (v, o) in enumerate(zip(s, op.srcs))]
    if op.name == "hsub2":
        return lanes + [f"{d} = _pack(_l0 - _l1, _h0 - _h1)"]
    if op.name == "hmul2":
        return lanes + [f"{d} = _pack(_l0 * _l1, _h0 * _h1)"]
    if op.name == "hfma2":
        return lanes + [f"{d} = _pack(_l0 * _l1 + _l2, _h0 * _h1 + _h2)"]
    if op.name == "hseteq":
        return lanes + [f"{d} = (tl.where(_l0 == _l1, 0x3C00, 0).to(tl.int64)",
                        f"     | tl.where(_h0 == _h1, 0x3C000000, 0).to(tl.int64))"]
    raise ValueError(op.name)


# ----------------------------------------------------------------------------- NumPy emulator


def emulate(plan: DecodePlan, w: np.ndarray, x: np.ndarray, aux: int | np.ndarray = 0,
            acc: np.ndarray | None = None) -> np.ndarray:
    """Run the word program on arrays: w uint32 [...], x fp16 [..., 8] -> fp16x2 acc (uint32).

    With x = one-hot rows the result exposes single decoded weights (what the tests use).
    """
    xb = np.ascontiguousarray(x.astype(np.float16)).view(np.uint32)  # [..., 4] pairs
    regs: dict[str, np.ndarray] = {"w": w.astype(np.uint32), "aux": np.asarray(aux, np.uint32)}
    for k in range(4):
        regs[f"x{k}"] = xb[..., k]
    regs["acc"] = np.zeros_like(regs["w"]) if acc is None else acc.astype(np.uint32)
    for op in setup_program(plan) + group_program(plan) + word_program(plan):
        regs[op.dst] = _np_op(op, regs)
    return regs["acc"]


def lanes(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) fp16 lanes of packed registers."""
    r = np.asarray(r, np.uint32)
    return ((r & 0xFFFF).astype(np.uint16).view(np.float16),
            (r >> 16).astype(np.uint16).view(np.float16))


def pack(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    lo16 = np.asarray(lo, np.float16).view(np.uint16).astype(np.uint32)
    hi16 = np.asarray(hi, np.float16).view(np.uint16).astype(np.uint32)
    return lo16 | (hi16 << 16)


def _np_op(op: Op, regs: dict[str, np.ndarray]) -> np.ndarray:
    v = [np.uint32(s) if isinstance(s, int) else regs[s] for s in op.srcs]
    with np.errstate(over="ignore", invalid="ignore"):
        if op.name == "shl":
            return (v[0].astype(np.uint64) << op.imm).astype(np.uint32)
        if op.name == "shr":
            return v[0] >> np.uint32(op.imm)
        if op.name == "sub":
            return (v[0].astype(np.int64) - v[1].astype(np.int64)).astype(np.uint32)
        if op.name in ("mov", "movv"):
            return np.broadcast_to(np.uint32(op.srcs[0]), regs["w"].shape).copy()
        if op.name == "prmt" and len(v) == 3:
            eight = v[0].astype(np.uint64) | (v[1].astype(np.uint64) << 32)
            out = np.zeros(np.broadcast(v[0], v[1], v[2]).shape, np.uint64)
            for k in range(4):
                nib = (v[2].astype(np.uint64) >> np.uint64(4 * k)) & np.uint64(15)
                byte = (eight >> (np.uint64(8) * (nib & np.uint64(7)))) & np.uint64(0xFF)
                byte = np.where(nib & np.uint64(8), (byte >> np.uint64(7)) * np.uint64(0xFF), byte)
                out |= byte.astype(np.uint64) << np.uint64(8 * k)
            return out.astype(np.uint32)
        if op.name == "prmt":
            eight = v[0].astype(np.uint64) | (v[1].astype(np.uint64) << 32)
            out = np.zeros(np.broadcast(v[0], v[1]).shape, np.uint64)
            for k in range(4):
                nib = (op.imm >> (4 * k)) & 15
                byte = (eight >> np.uint64(8 * (nib & 7))) & np.uint64(0xFF)
                if nib & 8:  # sign-replicate mode
                    byte = (byte >> np.uint64(7)) * np.uint64(0xFF)
                out |= byte << np.uint64(8 * k)
            return out.astype(np.uint32)
        if op.name == "lop3":
            a, b, c = (np.asarray(t, np.uint32) for t in v)
            out = np.zeros(np.broadcast(a, b, c).shape, np.uint32)
            for i in range(8):
                if op.imm >> i & 1:
                    out |= ((a if i & 4 else ~a) & (b if i & 2 else ~b) & (c if i & 1 else ~c))
            return out
        ls = [lanes(t) for t in v]
        f64 = [(lo.astype(np.float64), hi.astype(np.float64)) for lo, hi in ls]
        if op.name == "hsub2":
            return pack(f64[0][0] - f64[1][0], f64[0][1] - f64[1][1])
        if op.name == "hmul2":
            return pack(f64[0][0] * f64[1][0], f64[0][1] * f64[1][1])
        if op.name == "hfma2":
            return pack(f64[0][0] * f64[1][0] + f64[2][0], f64[0][1] * f64[1][1] + f64[2][1])
        if op.name == "hseteq":
            return (np.where(f64[0][0] == f64[1][0], 0x3C00, 0)
                    | np.where(f64[0][1] == f64[1][1], 0x3C000000, 0)).astype(np.uint32)
    raise ValueError(op.name)

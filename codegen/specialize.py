"""What a kernel is specialized on, and which tile configurations are worth trying.

A `KernelSpec` is one (format, N, K, group size[, decode-relevant options]) specialization: one
emitted file with a GEMV and a GEMM kernel. The batch dimension M is not compiled in; it picks
the kernel family (GEMV for decode, M <= GEMV_MAX_M) and an M bucket, and (kernel, M bucket)
keys the tuned configuration.

Config pruning encodes what the kernels and the hardware need (`prune`):
- BLOCK_K and the group size: BLOCK_K divides G (a K tile sits inside one group, so the scale
  is one value per row) or G divides BLOCK_K (a tile holds whole groups; the kernel gathers
  one scale per packed column). A tile never straddles a partial group. Both are powers of two
  for every group size the formats allow, so this only bites for exotic group sizes.
- BLOCK_K is a multiple of the packing unit and a power of two (tl.arange needs one).
- GEMM: every tl.dot operand dimension >= 16 (BLOCK_M, BLOCK_N, and the per-plane K slice
  BLOCK_K / codes-per-unit), and the pipelined tiles fit the device's shared memory. The
  tensor-core GEMM (gemm16.py) with 32 weight rows (output columns) per warp on wgmma (4 or
  more warps: BLOCK_N 128 with 4 warps, 256 with 8) fails in Triton 3.9's lowering ("Illegal
  shared layout"), so those configs are rejected before anything compiles them.
- GEMV: the broadcast product [BLOCK_M, BLOCK_N, BLOCK_K/unit] stays within a register budget
  per thread, and every thread gets work.
- split-K only while each split still gets a K tile (and, in `candidates`, only while the
  grid would not fill the GPU twice without it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from functools import cached_property
from typing import Any

from qcompiler.codegen import gemm16_asm
from qcompiler.codegen.decode_plan import DecodePlan, normalize_opts, plan_for
from qcompiler.errors import QCompilerError


class KernelKind(StrEnum):
    """The two kernel families of every emitted file."""

    GEMV = "gemv"  # decode: M = 1..GEMV_MAX_M, FMA reduction, split-K
    GEMM = "gemm"  # prefill / batches: tl.dot tiles


GEMV_MAX_M = 4
M_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TUNING_VERSION = 4  # bump when the kernels change in a way that invalidates tuned configs
# (2: the M = 1 GEMV is the fp16x2 kernel, gemv16.py; 3: the 4-bit GEMM is gemm16.py; 4: nf4's
# GEMM too, whose fp32-GEMM configs may have 32 columns per warp, which gemm16 cannot compile)


def m_bucket(m: int) -> int:
    """Smallest bucket >= m; everything past the last bucket shares it."""
    for b in M_BUCKETS:
        if m <= b:
            return b
    return M_BUCKETS[-1]


def kind_for(m: int) -> KernelKind:
    return KernelKind.GEMV if m <= GEMV_MAX_M else KernelKind.GEMM


def next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (x - 1).bit_length()


# ----------------------------------------------------------------------------- the specialization


@dataclass(frozen=True)
class KernelSpec:
    """One specialization. `opts` is canonical JSON of the quantize options that change the
    decode (e.g. custom RaZeR specials), "" when the format's defaults apply."""

    format: str
    N: int
    K: int
    group_size: int
    opts: str = ""

    @cached_property
    def plan(self) -> DecodePlan:
        return plan_for(self.format, self.opts)

    @property
    def suffix(self) -> str:
        """Name suffix that tells non-default decode options apart (stable hash)."""
        if not self.opts:
            return ""
        return "_o" + hashlib.sha1(self.opts.encode()).hexdigest()[:8]

    def kernel_name(self, kind: KernelKind) -> str:
        """e.g. `qc_razer4_gemv_n4096_k4096_g128`."""
        return (f"qc_{self.plan.ident}_{kind.value}_n{self.N}_k{self.K}_g{self.group_size}"
                f"{self.suffix}")

    @property
    def file_name(self) -> str:
        return f"qc_{self.plan.ident}_n{self.N}_k{self.K}_g{self.group_size}{self.suffix}.py"

    def tuning_key(self, kind: KernelKind, bucket: int) -> str:
        """Key of a tuned config: (format, N, K, group, opts, kernel, M bucket)."""
        return (f"{self.format}|n{self.N}|k{self.K}|g{self.group_size}{self.suffix}"
                f"|{kind.value}|m{bucket}|v{TUNING_VERSION}")


def make_spec(format: str, N: int, K: int, group_size: int,
              opts: dict[str, Any] | str | None = None, layer: str | None = None) -> KernelSpec:
    """A validated spec; errors are one line naming the layer and what to change."""
    where = f" in {layer}" if layer else ""
    for name, v in (("N", N), ("K", K), ("group size", group_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise QCompilerError(f"codegen: {name} must be a positive integer, got {v!r}{where}")
    if K % group_size:
        raise QCompilerError(f"codegen: group size {group_size} does not divide K={K}{where}; "
                             f"pick a group size that divides K")
    plan = plan_for(format, opts)
    if group_size % plan.elems_per_unit:
        raise QCompilerError(f"codegen: group size {group_size} is not a multiple of the "
                             f"{plan.bits}-bit packing unit ({plan.elems_per_unit} codes){where}")
    canonical = json.dumps(normalize_opts(opts), sort_keys=True, separators=(",", ":"))
    if canonical == "{}" or plan == plan_for(format, None):
        canonical = ""  # options that do not change the decode (e.g. pow2 scales) share kernels
    return KernelSpec(format=plan.format, N=N, K=K, group_size=group_size, opts=canonical)


# ----------------------------------------------------------------------------- tile configs


@dataclass(frozen=True)
class KernelConfig:
    """Launch parameters of one kernel. GEMV ignores block_m (it is the M bucket) and group_m."""

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 2

    def as_launch_dict(self) -> dict[str, int]:
        """The dict an emitted launcher takes (`config=`)."""
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "BLOCK_K": self.block_k,
                "SPLIT_K": self.split_k, "GROUP_M": self.group_m, "num_warps": self.num_warps,
                "num_stages": self.num_stages}

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KernelConfig:
        return cls(**{k: int(d[k]) for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class DeviceLimits:
    """What pruning needs to know about the target. `reference()` is an H100 SXM."""

    name: str = "reference-h100"
    num_sms: int = 132
    smem_bytes: int = 227 * 1024

    @classmethod
    def reference(cls) -> DeviceLimits:
        return cls()

    @classmethod
    def interpreter(cls) -> DeviceLimits:
        """TRITON_INTERPRET: one 'SM', no shared memory limit."""
        return cls(name="interpreter", num_sms=1, smem_bytes=1 << 30)

    @classmethod
    def for_device(cls, device: Any) -> DeviceLimits:
        import torch

        p = torch.cuda.get_device_properties(device)
        smem = getattr(p, "shared_memory_per_block_optin", 0) or 99 * 1024
        return cls(name=p.name, num_sms=p.multi_processor_count, smem_bytes=int(smem))


# gemm16.py on wgmma (4+ warps): 32 weight rows per warp fail in Triton 3.9's lowering
# ("Illegal shared layout; expected collapsed shapePerCTA to be at least [8, 64]"), measured for
# BLOCK_N 128 / 4 warps and 256 / 8 warps at BLOCK_K 64 and 128; 16 and 64 rows per warp compile
GEMM16_BAD_COLUMNS_PER_WARP = 32
# gemm16.py formats whose decode keeps more registers live than the default BLOCK_K 128 leaves
# (sm_90 SASS of the default tile on the Llama-3-8B shape spills to local memory, LDL / STL in
# the loop: nf4 at M = 256, nvfp4-razer at M = 16 and 256): half the words per thread and
# iteration. tests/codegen/test_gemm16.py checks their default tiles compile without spills.
GEMM16_BLOCK_K = {"nf4": 64, "nvfp4-razer": 64}
GEMV_REGISTER_BUDGET = 128  # fp32 products per thread per plane in the GEMV's broadcast tile
# The tuning search space. Kept small on purpose: every config is a compile (~1 s) on first use.
GEMV_SPACE = dict(block_n=(16, 32, 64), block_k=(128, 256, 512), split_k=(1, 2, 4, 8))
GEMM_SPACE = dict(block_n=(64, 128, 256), block_k=(64, 128), split_k=(1, 2, 4),
                  num_stages=(3, 4))


class Why(StrEnum):
    """Reasons `prune` rejects a config (the default-config fitter reacts to each)."""

    UNIT = "unit"
    GROUP = "group"
    TOO_BIG = "too-big"
    SPLIT = "split"
    FAMILY = "family"
    REGISTERS = "registers"
    IDLE_THREADS = "idle-threads"
    DOT_SHAPE = "dot-shape"
    BLOCK_M = "block-m"
    SHARED_MEMORY = "shared-memory"
    LAYOUT = "layout"


@dataclass(frozen=True)
class Rejection:
    why: Why
    message: str

    def __str__(self) -> str:
        return self.message


def prune(spec: KernelSpec, kind: KernelKind, bucket: int, cfg: KernelConfig,
          limits: DeviceLimits) -> Rejection | None:
    """Why `cfg` cannot run (or is pointless) for this spec, or None if it is a candidate."""
    plan = spec.plan
    epu = plan.elems_per_unit
    g, bk = spec.group_size, cfg.block_k
    block_u = bk // epu
    if bk % epu or block_u & (block_u - 1):
        return Rejection(Why.UNIT, "BLOCK_K / codes-per-unit must be a power of two")
    if g % bk and bk % g:
        return Rejection(Why.GROUP, f"BLOCK_K={bk} and group size {g}: neither divides the other")
    if bk > max(next_pow2(spec.K), epu) or cfg.block_n > max(next_pow2(spec.N), 8):
        return Rejection(Why.TOO_BIG, "tile larger than the matrix")
    if cfg.split_k > -(-spec.K // bk):
        return Rejection(Why.SPLIT, "more K splits than K tiles")
    threads = 32 * cfg.num_warps
    if kind is KernelKind.GEMV:
        if bucket > GEMV_MAX_M:
            return Rejection(Why.FAMILY, "the GEMV is for M <= GEMV_MAX_M")
        if bucket * cfg.block_n * block_u / threads > GEMV_REGISTER_BUDGET:
            return Rejection(Why.REGISTERS, "GEMV tile exceeds the register budget")
        if cfg.block_n * block_u < threads:
            return Rejection(Why.IDLE_THREADS, "fewer tile elements than threads")
        return None
    if min(cfg.block_m, cfg.block_n, block_u) < 16:
        return Rejection(Why.DOT_SHAPE, "tl.dot needs every operand dimension >= 16")
    if cfg.block_m > max(16, next_pow2(bucket)):
        return Rejection(Why.BLOCK_M, "BLOCK_M larger than the M bucket")
    if (gemm16_asm.supported(plan) and cfg.num_warps >= 4
            and cfg.block_n == GEMM16_BAD_COLUMNS_PER_WARP * cfg.num_warps):
        return Rejection(Why.LAYOUT, f"BLOCK_N={cfg.block_n} over {cfg.num_warps} warps: 32 "
                                     "columns per warp fail in Triton's wgmma lowering "
                                     "(\"Illegal shared layout\")")
    smem = (cfg.num_stages * (cfg.block_m * bk * 2 + cfg.block_n * bk * plan.bits // 8)
            + bk * cfg.block_n * 2)
    if smem > limits.smem_bytes:
        return Rejection(Why.SHARED_MEMORY, f"needs {smem} bytes of shared memory, the device "
                                            f"has {limits.smem_bytes}")
    return None


def candidates(spec: KernelSpec, kind: KernelKind, bucket: int,
               limits: DeviceLimits) -> list[KernelConfig]:
    """The configs autotuning times (pruned, at most a few dozen), the default one first."""
    grid: list[KernelConfig] = []
    if kind is KernelKind.GEMV:
        s = GEMV_SPACE
        for bn in s["block_n"]:
            for bk in s["block_k"]:
                warps = 8 if bn * bk // spec.plan.elems_per_unit > 4096 else 4
                grid += [KernelConfig(bucket, bn, bk, sk, 1, warps, 2) for sk in s["split_k"]]
    else:
        s = GEMM_SPACE
        # BLOCK_M 256 decodes each weight tile once for 256 rows: at large M the decode, not
        # the MMA, is the bottleneck of a fused-dequant GEMM
        bms = ({min(max(16, next_pow2(bucket)), 128)} | ({64} if bucket >= 128 else set())
               | ({256} if bucket >= 256 else set()))
        splits = s["split_k"]
        # large M: fewer K/stage variants, more BLOCK_M ones (keeps the search near 30 configs)
        bks = s["block_k"] if bucket <= 64 else s["block_k"][:1]
        stages = s["num_stages"] if bucket <= 64 else s["num_stages"][:1]
        for bm in sorted(bms):
            for bn in s["block_n"]:
                warps = 8 if bm * bn >= 128 * 128 or bm >= 256 else 4
                grid += [KernelConfig(bm, bn, bk, sk, 8, warps, ns) for bk in bks
                         for sk in splits for ns in stages]
    out = [default_config(spec, kind, bucket, limits)]
    for cfg in grid:
        if (cfg not in out and prune(spec, kind, bucket, cfg, limits) is None
                and _worth_timing(spec, kind, bucket, cfg, limits)):
            out.append(cfg)
    return out


def _worth_timing(spec: KernelSpec, kind: KernelKind, bucket: int, cfg: KernelConfig,
                  limits: DeviceLimits) -> bool:
    """Drop configs that cannot win: grids of more than 16 waves, and split-K when the grid
    already covers every SM twice (the split only adds the workspace round trip)."""
    tiles = -(-spec.N // cfg.block_n)
    if kind is KernelKind.GEMM:
        tiles *= -(-bucket // cfg.block_m)
    if tiles * cfg.split_k > 16 * limits.num_sms:
        return False
    return cfg.split_k == 1 or tiles < 2 * limits.num_sms


def default_config(spec: KernelSpec, kind: KernelKind, bucket: int,
                   limits: DeviceLimits) -> KernelConfig:
    """The untuned choice, a rule of thumb for memory-bound decode and dot-bound prefill.

    GEMV: 256-wide K tiles (a few groups per tile at g <= 128), 32 rows per program (64 at
    M = 1), and split-K until the grid covers every SM twice. GEMM: BLOCK_M follows M,
    128-wide N tiles from M >= 64, K tiles of 64 (or as many as the dot needs per packing
    plane).
    """
    epu = spec.plan.elems_per_unit
    k_cap = max(next_pow2(spec.K), epu)
    if kind is KernelKind.GEMV:
        bk = min(256, k_cap)
        # M = 1: 64 rows per program, so each thread reuses its activation registers over more
        # rows (about -0.25 instructions per code in the sm_90 SASS of both GEMVs)
        bn = min(64 if bucket == 1 else 32, max(8, next_pow2(spec.N)))
        cfg = KernelConfig(bucket, bn, bk, 1, 1, 4, 2)
        cfg = _fit(spec, kind, bucket, cfg, limits)
        return _with_split(spec, cfg, limits, cap=8, tiles=-(-spec.N // cfg.block_n))
    bm = min(max(16, next_pow2(bucket)), 128)
    bn = 128 if bucket >= 64 else 64
    bk = min(max(64, 16 * epu), max(k_cap, 16 * epu))
    nw = 8 if bm * bn >= 128 * 128 else 4
    if gemm16_asm.supported(spec.plan):  # gemm16.py: wide weight tiles amortize the MMA issue
        bm, bn = min(bm, 64), min(256, max(16, next_pow2(spec.N)))
        bk = min(GEMM16_BLOCK_K.get(spec.format, 128), k_cap)
        nw = 8 if bn == 128 else 4  # 16 or 64 columns per warp (32 fail: prune, Why.LAYOUT)
    cfg = _fit(spec, kind, bucket, KernelConfig(bm, bn, bk, 1, 8, nw, 3), limits)
    if bucket <= 64:
        tiles = -(-bucket // cfg.block_m) * -(-spec.N // cfg.block_n)
        cfg = _with_split(spec, cfg, limits, cap=4, tiles=tiles)
    return cfg


def _fit(spec: KernelSpec, kind: KernelKind, bucket: int, cfg: KernelConfig,
         limits: DeviceLimits) -> KernelConfig:
    """Shrink a heuristic config until `prune` accepts it (small matrices, tiny smem)."""
    for _ in range(32):
        rejection = prune(spec, kind, bucket, cfg, limits)
        if rejection is None:
            break
        why = rejection.why
        if why is Why.GROUP:  # the largest power of two dividing the group (32 for 96)
            g = spec.group_size
            cfg = _replace(cfg, block_k=min(cfg.block_k, g & -g))
        elif why is Why.SHARED_MEMORY and cfg.num_stages > 1:
            cfg = _replace(cfg, num_stages=cfg.num_stages - 1)
        elif why in (Why.REGISTERS, Why.SHARED_MEMORY):
            cfg = _replace(cfg, block_k=max(cfg.block_k // 2, spec.plan.elems_per_unit))
        elif why is Why.IDLE_THREADS and cfg.num_warps > 1:
            cfg = _replace(cfg, num_warps=cfg.num_warps // 2)
        else:
            break
    return cfg


def _with_split(spec: KernelSpec, cfg: KernelConfig, limits: DeviceLimits, cap: int,
                tiles: int) -> KernelConfig:
    k_tiles = -(-spec.K // cfg.block_k)
    split = 1
    while tiles * split < 2 * limits.num_sms and split * 2 <= min(cap, k_tiles):
        split *= 2
    return _replace(cfg, split_k=split)


def _replace(cfg: KernelConfig, **kw: int) -> KernelConfig:
    d = asdict(cfg)
    d.update(kw)
    return KernelConfig(**d)

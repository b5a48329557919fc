"""The rows of the SmolLM2-135M WikiText-2 table (bench/accuracy_smollm2.py), in run order.

Every row is a pipeline string (rerun it with `qcompile zoo:smollm2-135m --pipeline '...'`).
Weight formats run at g64, the NVFP4 family at its fixed g16 and MXFP4 at its fixed g32.

Order matters because a run can be stopped at any time and keeps what it finished: tier 1 is
what the papers' claims need without calibration (RTN rows, W4A8 FP8 vs INT8 activations, KV4);
tier 2 the calibrated rows the claims need, at the first calibration seed; tier 3 their other
seeds; tier 4 the rest of the matrix (every other format × method), first seed; tier 5 its
other seeds. A task is one (row, seed); rows without calibration run once.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = 64
WEIGHT_FORMATS = ("razer4", "fp4", "int4", "int4-sym", "nvfp4", "nvfp4-razer", "int3", "pot3",
                  "int2", "pot2", "pot4", "nf4", "dint4", "mxfp4")
CLAIM_FORMATS = ("razer4", "fp4", "int4", "int4-sym", "nvfp4", "nvfp4-razer")
METHODS = ("rtn", "clip", "awq", "gptq", "F-max")
W4A8_WEIGHTS = "fp4"  # ZeroQuant-FP's W4A8 is FP4 weights; the same weights for every A8 row
ACTS = ("int8", "fp8-e4m3")
# GPTQ's default is act-order with output-error group scales (passes/gptq.py); these rows show
# what each half brings: gptq-prev is the default before 2026-12-03 (neither), the others one
GPTQ_VARIANTS = {"gptq-prev": "act-order=false,search=clip",
                 "gptq-act-order": "act-order=true,search=clip",
                 "gptq-output-mse": "act-order=false,search=output-mse"}


@dataclass(frozen=True)
class Row:
    """One table row: a weight format and method, optionally activations / KV quantized."""

    format: str
    method: str  # rtn, clip, awq, gptq, F-max, F-max-prev, pot-refine, w4a8, smooth, aqas, kv4,
    # or one of GPTQ_VARIANTS
    act: str | None = None  # activation format (W4A8 rows)
    kv: str | None = None  # KV-cache format
    tier: int = 4

    @property
    def key(self) -> str:
        return "|".join([self.format, self.method, self.act or "", self.kv or ""])

    @property
    def calibrated(self) -> bool:
        return self.method not in ("rtn", "w4a8", "kv4")

    @property
    def group(self) -> int:
        return group_for(self.format)

    @property
    def pipeline(self) -> str:
        return pipeline(self)


def group_for(fmt: str) -> int:
    """g64 where the format allows it; NVFP4 (16) and MXFP4 (32) have fixed blocks."""
    from qcompiler import formats

    f = formats.get(fmt)
    return GROUP if GROUP in f.group_sizes else int(f.default_group_size)


def bits_per_weight(fmt: str) -> float:
    from qcompiler import formats

    return float(formats.get(fmt).bits_per_weight(group_for(fmt)))


def lower(fmt: str, search: str | None = None) -> str:
    extra = f",search={search}" if search else ""
    return (f"lower-datatype{{format={fmt},group-size={group_for(fmt)},on-indivisible=pad"
            f"{extra}}}")


def pipeline(row: Row) -> str:
    f, q = row.format, f"format={row.format},group-size={group_for(row.format)}"
    m = row.method
    if m in ("rtn", "w4a8", "kv4"):
        body = f"canonicalize,dce,{lower(f, 'rtn')}"
    elif m == "clip":
        body = f"canonicalize,dce,fold-norms,clip{{{q},objective=output-mse}},{lower(f)}"
    elif m == "awq":
        body = f"canonicalize,dce,awq{{{q}}},{lower(f, 'rtn')}"
    elif m == "gptq":
        body = f"canonicalize,dce,fold-norms,gptq{{{q}}},{lower(f)}"
    elif m in GPTQ_VARIANTS:
        body = f"canonicalize,dce,fold-norms,gptq{{{q},{GPTQ_VARIANTS[m]}}},{lower(f)}"
    elif m == "F-max":
        body = f"canonicalize,dce,fold-norms,rotate{{kind=hadamard}},gptq{{{q}}},{lower(f)}"
    elif m == "F-max-prev":  # F-max with GPTQ's previous defaults: rotation's share, apart
        body = (f"canonicalize,dce,fold-norms,rotate{{kind=hadamard}},"
                f"gptq{{{q},{GPTQ_VARIANTS['gptq-prev']}}},{lower(f)}")
    elif m == "pot-refine":
        body = f"canonicalize,dce,pot-refine{{{q}}},{lower(f)}"
    elif m == "smooth":
        body = f"canonicalize,dce,smooth{{alpha=0.5}},{lower(f, 'rtn')}"
    elif m == "aqas":
        body = (f"canonicalize,dce,aqas{{w-format={f},a-format={row.act},"
                f"group-size={group_for(f)}}},{lower(f, 'rtn')}")
    else:
        raise ValueError(f"unknown method {m!r}")
    if row.act:
        body += f",quantize-act{{format={row.act},granularity=token}}"
    if row.kv:
        body += f",quantize-kv{{format={row.kv}}}"
    return body + ",dce"


def rows() -> list[Row]:
    """Every row of the full matrix, in tier order (first tier first)."""
    out: list[Row] = []
    add = out.append
    # tier 1: no calibration, what the claims need
    for f in CLAIM_FORMATS + ("int3", "pot3"):
        add(Row(f, "rtn", tier=1))
    for a in ACTS:
        add(Row(W4A8_WEIGHTS, "w4a8", act=a, tier=1))
    add(Row("razer4", "kv4", kv="razer4", tier=1))
    # tier 2: calibrated rows the claims need, grouped by method so that consecutive rows
    # share the method's calibration statistics (qcompiler/stats_memo.py: one collection per
    # method and seed instead of one per row). Every claim gets its rows before any claim
    # gets its second method: GPTQ (int3's row shares the Hessians), then W4A8 smoothing and
    # PoT refinement, then clip and AWQ.
    claim_formats = ("razer4", "fp4", "int4", "nvfp4", "nvfp4-razer", "int4-sym")
    for f in claim_formats + ("int3",):
        add(Row(f, "gptq", tier=2))
    # the previous GPTQ default (no act-order, weight-error group scales), measured before
    # the default changed, and each half of the change on razer4: what they bought (README)
    for f in claim_formats + ("int3",):
        add(Row(f, "gptq-prev", tier=2))
    for m in ("gptq-act-order", "gptq-output-mse"):
        add(Row("razer4", m, tier=2))
    for m in ("smooth", "aqas"):
        for a in ACTS:
            add(Row(W4A8_WEIGHTS, m, act=a, tier=2))
    add(Row("pot3", "pot-refine", tier=2))
    for m in ("clip", "awq"):
        for f in claim_formats:
            add(Row(f, m, tier=2))
    # tier 4: the rest of the matrix
    seen = {r.key for r in out}
    rest = [Row(f, "rtn") for f in WEIGHT_FORMATS]
    rest += [Row(f, "pot-refine") for f in ("pot2", "pot4")]
    rest += [Row(f, m) for m in ("clip", "F-max", "gptq", "awq") for f in WEIGHT_FORMATS]
    # rotation with GPTQ's previous defaults, where F-max lost to GPTQ alone (the FP grids)
    # and where it won (int4-sym, int3): does rotation or the new GPTQ defaults decide it?
    rest += [Row(f, "F-max-prev") for f in ("razer4", "fp4", "nvfp4", "int4-sym", "int3")]
    out += [r for r in rest if r.key not in seen and not seen.add(r.key)]
    return out


def tasks(seeds: int, only: set[str] | None = None) -> list[tuple[Row, int]]:
    """(row, seed) in run order: tier 1, tier 2 at seed 0, tier 2 other seeds (tier 3), tier 4
    at seed 0, tier 4 other seeds (tier 5). `only`: keep rows whose format, method or
    "format/method" is in it."""
    chosen = [r for r in rows() if only is None or r.format in only or r.method in only
              or f"{r.format}/{r.method}" in only]
    out: list[tuple[Row, int]] = []
    for tier in (1, 2, 4):
        group = [r for r in chosen if r.tier == tier]
        out += [(r, 0) for r in group]
        out += [(r, s) for s in range(1, seeds) for r in group if r.calibrated]
    return out

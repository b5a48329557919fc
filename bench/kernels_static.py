"""Static sm_90 SASS table of the generated kernels: instructions per code, no GPU needed.

    python bench/kernels_static.py                         # Llama-3-8B down_proj shape
    python bench/kernels_static.py --formats razer4,int4-sym --out /tmp/t.md

For every weight format the code generator supports, the emitted kernel file for
(N 4096, K 14336, group 128; the formats that only allow other groups, mxfp4 and the nvfp4
family, at their own group size) is compiled for `cuda:90` with Triton's pipeline and bundled
ptxas (`qcompiler.codegen.aot`, untuned default configs), and the hot loop's SASS is counted:
"instr / code" = instructions of the kernel's largest loop divided by the codes one thread
decodes per iteration. At M = 1 both GEMV kernels are counted: the default fp16x2 one and the
fp32-FMA one it replaced (`QC_GEMV=fp32` selects it at run time); at M = 16 and 256 both GEMMs:
the default (the tensor-core gemm16 for the 4-bit formats) and the fp32-decode one
(`QC_GEMM=fp32`; the same kernel for formats without gemm16).

Why this number: an H200 issues about 3.3e13 thread-instructions/s and a 4-bit g128 weight
stream at 85 % of 4.8 TB/s delivers about 7.9e12 codes/s, so an M = 1 GEMV stays memory-bound
only below about 4.2 instructions per code (H100: about 5.8). Budgets checked here (issue 12):
M = 1: every 4-bit format <= 4.5, nf4 <= 6, razer4 <= int4-sym + 0.5; M = 16 / 256: <= 6;
and no default kernel spills registers (local-memory LDL / STL in its SASS).
This is a static count, not a timing: `bench/kernel_speed.py` measures on a GPU.
Exit codes: 0 ok, 1 a kernel failed to compile, 2 usage error (or TRITON_INTERPRET set).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS / "kernels-sm90-static-llama3.md"
# the table before the fp16x2 GEMV (2026-12-02: fp32-FMA GEMV, 32 rows per program)
BEFORE = RESULTS / "kernels-sm90-static-llama3-before.json"
FORMATS = ("int4-sym", "int4", "fp4", "razer4", "pot4", "dint4", "nf4", "mxfp4", "nvfp4",
           "nvfp4-razer", "int3", "pot3", "int2", "pot2", "int8", "fp8-e4m3")
M_VALUES = (1, 16, 256)
BUDGET_M1, BUDGET_NF4, BUDGET_GEMM, RAZER_SLACK = 4.5, 6.0, 6.0, 0.5
COLUMNS = ("gemv", "gemv-fp32", "gemm16", "gemm256", "gemm16-fp32", "gemm256-fp32")


def measure(fmt: str, n: int, k: int, group: int | None, ms: tuple[int, ...] = M_VALUES) -> dict:
    """{'group': g, column: (instr/code or None, loop instructions, config) } for one format."""
    from qcompiler import formats
    from qcompiler.codegen import runtime
    from qcompiler.codegen.aot import compile_kernel
    from qcompiler.codegen.specialize import (DeviceLimits, default_config, kind_for, m_bucket,
                                              make_spec)

    f = formats.get(fmt)
    g = group if group in f.group_sizes else (f.default_group_size or f.group_sizes[0])
    spec = make_spec(fmt, n, k, g)
    module = runtime.module_for(spec)
    limits = DeviceLimits.reference()
    row: dict = {"format": fmt, "bits": f.bits, "group": g}
    for m in ms:
        b = m_bucket(m)
        kind = kind_for(b)
        cfg = default_config(spec, kind, b, limits).as_launch_dict()
        kinds = (("gemv", "gemv"), ("gemv-fp32", "gemv-fp32")) if m == 1 else \
            ((f"gemm{m}", "gemm"), (f"gemm{m}-fp32", "gemm-fp32"))
        for column, kernel_kind in kinds:
            c = compile_kernel(module, kernel_kind, cfg, sass=True)
            per = (c.loop_instructions / c.codes_per_thread
                   if c.loop_instructions and c.codes_per_thread else None)
            row[column] = {"per_code": per, "loop": c.loop_instructions, "config": cfg,
                           "spills": c.local_memory}
    return row


def verdicts(rows: list[dict]) -> list[str]:
    """The issue-12 budgets, one line each, met or not."""
    by = {r["format"]: r for r in rows}
    out = []

    def val(fmt: str, col: str) -> float | None:
        return by.get(fmt, {}).get(col, {}).get("per_code")

    four = [r["format"] for r in rows if r["bits"] == 4 and r["format"] != "nf4"
            and val(r["format"], "gemv") is not None]
    if four:
        worst = max(four, key=lambda f: val(f, "gemv"))
        v = val(worst, "gemv")
        out.append(f"M = 1, every 4-bit format except nf4 <= {BUDGET_M1}: "
                   f"{'met' if v <= BUDGET_M1 else 'NOT met'} (worst {worst} {v:.2f})")
    if "nf4" in by and val("nf4", "gemv") is not None:
        v = val("nf4", "gemv")
        out.append(f"M = 1, nf4 <= {BUDGET_NF4}: {'met' if v <= BUDGET_NF4 else 'NOT met'} "
                   f"({v:.2f})")
    if val("razer4", "gemv") is not None and val("int4-sym", "gemv") is not None:
        r, i = val("razer4", "gemv"), val("int4-sym", "gemv")
        out.append(f"M = 1, razer4 <= int4-sym + {RAZER_SLACK}: "
                   f"{'met' if r <= i + RAZER_SLACK else 'NOT met'} ({r:.2f} vs {i:.2f})")
    for col, m in (("gemm16", 16), ("gemm256", 256)):
        vals = [(r["format"], r[col]["per_code"]) for r in rows
                if r["bits"] == 4 and r.get(col, {}).get("per_code") is not None]
        if vals:
            f, v = max(vals, key=lambda t: t[1])
            ok = v <= BUDGET_GEMM
            out.append(f"M = {m}, every 4-bit format <= {BUDGET_GEMM}: "
                       f"{'met' if ok else 'NOT met'} (worst {f} {v:.2f})")
    label = {"gemv": "GEMV M=1", "gemv-fp32": "GEMV M=1 fp32", "gemm16": "GEMM M=16",
             "gemm256": "GEMM M=256", "gemm16-fp32": "GEMM M=16 fp32",
             "gemm256-fp32": "GEMM M=256 fp32"}

    def spilled(cols: tuple[str, ...]) -> list[str]:
        return [f"{r['format']} {label[c]} ({r[c]['spills']})" for r in rows for c in cols
                if (r.get(c) or {}).get("spills")]

    if any((r.get(c) or {}).get("spills") is not None for r in rows for c in COLUMNS):
        default = spilled(("gemv", "gemm16", "gemm256"))
        out.append("no register spills (LDL / STL anywhere in the kernel) in the default "
                   "kernels: " + ("met" if not default else "NOT met: " + ", ".join(default)))
        old = spilled(("gemv-fp32", "gemm16-fp32", "gemm256-fp32"))
        if old:
            out.append("(not a budget) the fp32 comparison kernels that spill: " + ", ".join(old))
    return out


def render(rows: list[dict], n: int, k: int, argv: list[str],
           before: dict[str, dict] | None = None) -> str:
    import torch
    import triton

    def cell(r: dict, col: str) -> str:
        v = r.get(col, {}).get("per_code")
        return "-" if v is None else f"{v:.2f}"

    lines = [
        "# Generated kernels on sm_90: static SASS instructions per code (no GPU: not a timing)",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        "- machine: CPU only; kernels compiled for `cuda:90` with Triton's own pipeline and "
        "bundled ptxas, disassembled with nvdisasm",
        f"- torch {torch.__version__}, triton {triton.__version__}, Python "
        f"{platform.python_version()}",
        f"- command: `python bench/kernels_static.py{' ' + shlex.join(argv) if argv else ''}`",
        f"- shape: N {n} x K {k} (Llama-3-8B down_proj), group 128 unless the format only "
        "allows another (shown); untuned default configs",
        "- instr / code = SASS instructions in the hot loop / codes one thread decodes per "
        "iteration (GEMM counts include the MMA and x loads); \"before\" = the fp32-FMA GEMV "
        "with its old default (32 rows per program), from "
        "`kernels-sm90-static-llama3-before.json`; "
        "a fp32 entry equal to the default one means the format has no fp16x2 decode (GEMV) "
        "or no tensor-core fp16 decode (GEMM)",
        "",
        "| format | group | GEMV M=1 before | GEMV M=1 (fp16x2, default) "
        "| GEMV M=1 (fp32, `QC_GEMV=fp32`) | GEMM M=16 | GEMM M=256 "
        "| GEMM M=16 (fp32, `QC_GEMM=fp32`) | GEMM M=256 (fp32) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    before = before or {}
    for r in rows:
        old = cell(before[r["format"]], "gemv-fp32") if r["format"] in before else "-"
        lines.append(f"| {r['format']} | {r['group']} | {old} | " +
                     " | ".join(cell(r, c) for c in COLUMNS) + " |")
    lines += ["", "## Budgets (issue 12)", ""]
    lines += [f"- {v}" for v in verdicts(rows)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python bench/kernels_static.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--k", type=int, default=14336)
    p.add_argument("--group", type=int, default=128)
    p.add_argument("--m", default=",".join(map(str, M_VALUES)), help="subset of 1,16,256")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--before", type=Path, default=BEFORE,
                   help="JSON of an earlier run, shown as a 'before' column (M = 1 GEMV)")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("error: unset TRITON_INTERPRET to compile for a GPU target", file=sys.stderr)
        return 2
    from qcompiler.errors import QCompilerError

    rows, failed = [], 0
    for fmt in args.formats.split(","):
        try:
            ms = tuple(int(v) for v in args.m.split(","))
            if not set(ms) <= set(M_VALUES):
                print(f"error: --m takes values among {M_VALUES}, got {args.m}", file=sys.stderr)
                return 2
            rows.append(measure(fmt, args.n, args.k, args.group, ms))
        except QCompilerError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except Exception as e:  # noqa: BLE001  one compile failure must not hide the others
            failed += 1
            print(f"FAIL {fmt}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  file=sys.stderr)
            continue
        r = rows[-1]
        print(f"{fmt:12s} g{r['group']:<4d} " + "  ".join(
            f"{c}={r[c]['per_code']:.2f}" if r.get(c, {}).get("per_code") else f"{c}=-"
            for c in COLUMNS), flush=True)
    same_shape = (args.n, args.k, args.group) == (4096, 14336, 128)  # the BEFORE run's shape
    before = ({r["format"]: r for r in json.loads(args.before.read_text())}
              if same_shape and args.before and args.before.is_file() else None)
    text = render(rows, args.n, args.k, argv, before)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

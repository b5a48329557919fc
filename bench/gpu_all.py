"""One GPU command: every kernel checked, Llama-3-8B shapes timed, decode tokens/s; <= 8 min.

    pip install --no-deps --no-build-isolation -e . && python bench/gpu_all.py OUT
    python bench/gpu_all.py OUT --tune                   # separate: time the shipped candidates
                                                         # (resumable: run it again to go on)
    python bench/gpu_all.py OUT --dry-run                # CPU: everything up to the first CUDA call

The first line is the whole GPU run on one H100 / H200 (`--no-deps --no-build-isolation`: the
GPU machine has torch, triton and transformers but no network for the optional dependencies).

Sections, in order, each with a share of --budget-s (default 450 s; a section stops at its
deadline, unspent time passes to the next, and a watchdog ends the process 30 s past the budget):
- prewarm: the kernels the later sections launch are compiled in --jobs parallel worker
  processes into Triton's on-disk cache (one process would spend minutes compiling);
- correctness: every format x every kernel the launcher picks (fp16x2 GEMV, fp32 GEMV, GEMM,
  split-K GEMV / GEMM with bias, split-K GEMV replayed in a CUDA graph) on fresh random inputs
  against the fp32 reference (bench/gpu_checks.py);
- kernels: per M in {1, 16, 256} x Llama-3-8B shape (4096x4096, 1024x4096, 14336x4096,
  4096x14336) x format (razer4, nvfp4-razer, fp4, int4, int4-sym, nvfp4, mxfp4, pot4, nf4): us,
  GB/s, fraction of the measured copy bandwidth, speedup over torch fp16 matmul;
- decode: tokens/s at batch 1 and 16 of a random Llama-3-8B-shaped model (8 layers) against
  Hugging Face's fp16 eager generate (bench/gpu_decode.py).
No tuning: launch configs come from codegen/tuned/<GPU>.json (shipped untuned heuristic defaults
until a --tune run replaces them; bench/gpu_tune.py) and QCOMPILER_AUTOTUNE=0.

Results: OUT/results.jsonl (one JSON row per measurement, appended as it comes) and
OUT/results.md (re-rendered after every row; command, machine, date and versions at the top), so
a timeout loses nothing. Exit 0 when every check passed, 1 when a kernel result was wrong, 2 on
usage errors or when no GPU is visible (without --dry-run).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

FORMATS = ("razer4", "nvfp4-razer", "fp4", "int4", "int4-sym", "nvfp4", "mxfp4", "pot4", "nf4")
SHAPES = ((4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336))
SECTIONS = ("prewarm", "correctness", "kernels", "decode")
# cumulative fraction of the budget at which each section must stop
DEADLINES = {"prewarm": 0.25, "correctness": 0.35, "kernels": 0.64, "decode": 1.0}
TUNE_PREWARM = 0.45  # --tune: share of the budget for compiling the candidates in parallel
DRY_SHAPES = ((64, 256),)


@dataclass
class Context:
    out_dir: Path
    device: object
    dry_run: bool
    formats: tuple[str, ...]
    sections: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...] = SHAPES
    check_shape: tuple[int, int] = (1000, 4096)
    kernel_m: tuple[int, ...] = (1, 16, 256)
    decode_formats: tuple[str, ...] = ("razer4", "int4")
    decode_batches: tuple[int, ...] = (1, 16)
    decode_layers: int = 8
    timer: object = None
    started: float = field(default_factory=time.time)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/gpu_all.py", description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path, help="directory for results.jsonl and results.md")
    p.add_argument("--dry-run", action="store_true", help="CPU, TRITON_INTERPRET=1, small "
                   "shapes: runs everything up to the first CUDA call")
    p.add_argument("--tune", action="store_true", help="only tune the shipped candidate sets "
                   "and write OUT/<GPU>.json (resumable)")
    p.add_argument("--budget-s", type=float, default=450.0, help="total seconds (default 450)")
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--decode-formats", default="razer4,int4")
    p.add_argument("--decode-layers", type=int, default=8)
    p.add_argument("--jobs", type=int, default=None, help="prewarm worker processes (default: "
                   "CPUs - 2, at most 14; 1 with --dry-run, which compiles nothing)")
    p.add_argument("--warm-worker", default=None, help=argparse.SUPPRESS)  # "i/n": internal
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    os.environ.setdefault("QCOMPILER_AUTOTUNE", "0")  # shipped or default configs, no sweeps
    import torch

    from qcompiler import formats as registry
    from qcompiler.errors import QCompilerError

    if not args.dry_run and not torch.cuda.is_available():
        print("error: bench/gpu_all.py needs a CUDA GPU and none is visible; run with "
              "--dry-run to check it on the CPU", file=sys.stderr)
        return 2
    try:
        fmts = tuple(f for f in args.formats.split(",") if f)
        decode_fmts = tuple(f for f in args.decode_formats.split(",") if f)
        for f in fmts + decode_fmts:
            registry.get(f)
        sections = tuple(s for s in args.sections.split(",") if s)
        bad = [s for s in sections if s not in SECTIONS]
        if bad:
            raise QCompilerError(f"unknown section {bad[0]!r}; choose from {', '.join(SECTIONS)}")
    except QCompilerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ctx = Context(args.out_dir, torch.device("cpu" if args.dry_run else "cuda"), args.dry_run,
                  fmts, sections, decode_formats=decode_fmts, decode_layers=args.decode_layers)
    if args.dry_run:  # the same code paths on shapes the interpreter runs in seconds
        ctx.formats, ctx.shapes, ctx.check_shape = fmts[:1], DRY_SHAPES, (40, 256)
        ctx.kernel_m, ctx.decode_batches, ctx.decode_layers = (1, 16), (1, 2), 1
        ctx.decode_formats = decode_fmts[:1]
    if args.warm_worker:
        return _warm_worker(ctx, args.warm_worker, args.tune)
    from gpu_report import Report

    report = Report(ctx.out_dir, _header(args, ctx))
    _watchdog(args.budget_s + 30, report)
    try:
        return _run(ctx, report, args)
    finally:
        if hasattr(signal, "SIGALRM"):
            signal.alarm(0)


def _run(ctx: Context, report, args) -> int:
    deadline = ctx.started + args.budget_s
    ctx.timer = _wall_us if args.dry_run else _gpu_us()
    if args.tune:
        import gpu_tune

        if "prewarm" in ctx.sections:  # compile the candidates in parallel first
            _prewarm(ctx, report, ctx.started + TUNE_PREWARM * args.budget_s, args)
        print(f"wrote {gpu_tune.tune(ctx, report, deadline)}")
        return 0
    for section in ctx.sections:
        stop = ctx.started + DEADLINES[section] * args.budget_s
        t = time.time()
        _run_section(section, ctx, report, min(stop, deadline), args)
        print(f"{section}: {time.time() - t:.1f} s", flush=True)
    bad = report.failures()
    for r in bad:
        print(f"error: {r['format']} {r['kernel']} M={r['m']}: result off the reference "
              f"({r['err_ratio']:.2f}x the bound)", file=sys.stderr)
    print(f"wrote {ctx.out_dir / 'results.md'}")
    return 1 if bad else 0


def _run_section(section: str, ctx: Context, report, deadline: float, args) -> None:
    import gpu_checks
    import gpu_decode

    if section == "prewarm":
        _prewarm(ctx, report, deadline, args)
    elif section == "correctness":
        gpu_checks.correctness(ctx, report, deadline)
    elif section == "kernels":
        gpu_checks.timing(ctx, report, deadline)
    else:
        gpu_decode.decode(ctx, report, deadline)


def _prewarm(ctx: Context, report, deadline: float, args) -> None:
    """Compile every kernel of the later sections in parallel worker processes."""
    import gpu_checks
    import gpu_tune

    tasks = (gpu_tune if args.tune else gpu_checks).warm_tasks(ctx)
    jobs = args.jobs or (1 if ctx.dry_run else min(14, max(1, (os.cpu_count() or 2) - 2)))
    if jobs <= 1:  # in-process (the dry run's interpreter compiles nothing: one task shows it)
        for task in tasks[:1] if ctx.dry_run else tasks:
            if time.time() > deadline:
                break
            (gpu_tune if args.tune else gpu_checks).warm(ctx, task)
        report.note("kernels", f"prewarm: {len(tasks)} tasks, ran "
                               f"{1 if ctx.dry_run else len(tasks)} in-process")
        return
    jobs = min(jobs, len(tasks))
    base = [sys.executable, str(Path(__file__).resolve()), str(ctx.out_dir),  # read, not written
            "--formats", ",".join(ctx.formats), "--sections", ",".join(ctx.sections)]
    base += (["--dry-run"] if ctx.dry_run else []) + (["--tune"] if args.tune else [])
    logs = [tempfile.TemporaryFile() for _ in range(jobs)]  # not pipes: a full pipe blocks
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    procs = [subprocess.Popen(base + ["--warm-worker", f"{i}/{jobs}"], stdout=subprocess.DEVNULL,
                              stderr=logs[i], env=env) for i in range(jobs)]
    t = time.time()
    failed = 0
    for p, log in zip(procs, logs):
        try:
            p.wait(timeout=max(1.0, deadline - time.time()))
            failed += p.returncode != 0
            if p.returncode:
                log.seek(0)
                err = log.read().decode(errors="replace").strip()
                report.note("kernels", f"prewarm worker failed: {err[-300:]}")
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            failed += 1
        log.close()
    report.note("kernels", f"prewarm: {len(tasks)} compile tasks in {jobs} processes, "
                           f"{time.time() - t:.0f} s, {failed} worker(s) stopped or failed")


def _warm_worker(ctx: Context, which: str, tune: bool) -> int:
    import gpu_checks
    import gpu_tune

    module = gpu_tune if tune else gpu_checks
    i, n = (int(v) for v in which.split("/"))
    for task in module.warm_tasks(ctx)[i::n]:
        module.warm(ctx, task)
    return 0


def _gpu_us():
    from gpu_checks import bench_us

    return bench_us


def _wall_us(fn) -> float:
    """Dry run: one call, wall-clock microseconds (meaningless, but the rows get written)."""
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e6


def _watchdog(seconds: float, report) -> None:
    """Hard stop: a section stuck in one long call must not eat the rest of the GPU lease."""
    def fire(signum, frame):
        report.note("decode", f"watchdog: stopped after {seconds:.0f} s")
        print("error: gpu_all.py ran past its budget; results so far are written",
              file=sys.stderr, flush=True)
        os._exit(3)

    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, fire)
        signal.alarm(int(seconds))


def _header(args, ctx: Context) -> list[str]:
    import torch
    import triton
    import transformers

    from qcompiler.codegen import tuned

    gpu = torch.cuda.get_device_name() if ctx.device.type == "cuda" else "none (dry run)"
    shipped = tuned.file_for(gpu) if ctx.device.type == "cuda" else None
    if ctx.dry_run:
        configs = "dry run: interpreter defaults"
    elif shipped is None:
        configs = "no shipped file for this GPU: specialize.default_config"
    else:
        state = "tuned" if tuned.is_tuned(shipped) else "UNTUNED heuristic defaults"
        configs = f"shipped {shipped.name} ({state})"
    cmd = "python bench/gpu_all.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [f"# bench/gpu_all.py: {gpu}", "",
             f"- command: `{cmd}`",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
             f"- machine: {platform.node()}, {os.cpu_count()} CPUs, GPU {gpu}",
             f"- versions: Python {platform.python_version()}, torch {torch.__version__}, "
             f"triton {triton.__version__}, transformers {transformers.__version__}",
             f"- launch configs: {configs}; QCOMPILER_AUTOTUNE="
             f"{os.environ.get('QCOMPILER_AUTOTUNE')}",
             f"- budget: {args.budget_s:.0f} s; sections: {', '.join(ctx.sections)}"]
    if ctx.dry_run:
        lines += ["", "**Dry run on the CPU (TRITON_INTERPRET=1, small shapes): times are "
                      "meaningless; only the code path is exercised.**"]
    return lines


if __name__ == "__main__":
    sys.exit(main())

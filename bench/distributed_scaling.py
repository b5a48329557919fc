"""Speed-up of calibration over 2 processes (torch.distributed, gloo) on a random 0.1B Llama.

    python bench/calibration_scaling.py --nproc 2                  # 0.1B, gptq and clip
    python bench/calibration_scaling.py --nproc 2 --passes gptq --samples 16 --seqlen 256

The same model and data as the whole-model rows of calibration_scaling.py (seeded random
weights, seeded random token ids given as explicit batches): `canonicalize,<pass>{format=F}`,
`lower-datatype{format=F}`, as one process with torch's default threads (every CPU), as one
process with one thread, and as N ranks started by `qcompiler.launch.launch` (what `qcompile
--nproc N` runs; each rank gets CPUs/N threads), every process under `nice -n 10`. On a loaded
machine a multi-threaded process loses much more than single-threaded ones (its threads wait for
each other whenever one is descheduled), so the one-thread row is the fairer baseline there. Each rank builds and captures the model itself
(capture is not split); the pass is: the rank's share of the calibration forwards, the
reduction of the statistics, its share of the per-layer searches, the exchange of the plans.
Recorded: the calibrated pass's time (rank 0's report), the pipeline's, the whole run's wall
time, the peak RSS of the largest rank, and the load average (the machine may be shared: the
ratio is what to read, and only against a load near the CPU count is it the idle speed-up).
Rows go to bench/results/calibration_scaling_distributed.json and a table in
bench/results/calibration_scaling.md.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import row_machine

ROOT = Path(__file__).resolve().parents[1]
ROWS = ROOT / "bench" / "results" / "calibration_scaling_distributed.json"


def child(size: str, pass_name: str, fmt: str, samples: int, seqlen: int, out: str) -> int:
    """One rank (or the one process): build, capture, run the pipeline, rank 0 writes `out`."""
    from qcompiler.launch import run_rank

    def body(group) -> int:
        import torch
        import transformers

        from qcompiler.calibration import CalibrationConfig
        from qcompiler.capture import capture_hf_model
        from qcompiler.distributed import all_reduce
        from qcompiler.pass_manager import run_pipeline
        from qcompiler.passes_base import PassContext

        sys.path.insert(0, str(Path(__file__).parent))
        from calibration_scaling import SIZES, VOCAB

        hidden, inter, layers, heads, kv = SIZES[size]
        cfg = transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
            max_position_embeddings=2048, tie_word_embeddings=False, use_cache=False,
            bos_token_id=1, eos_token_id=2)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        program = capture_hf_model(transformers.LlamaForCausalLM(cfg).eval(),
                                   source=f"llama-{size}")
        t1 = time.perf_counter()
        g = torch.Generator().manual_seed(0)
        batches = [torch.randint(3, VOCAB, (1, seqlen), generator=g) for _ in range(samples)]
        ctx = PassContext(quiet=True, calibration=CalibrationConfig(batches=batches))
        spec = f"canonicalize,{pass_name}{{format={fmt}}},lower-datatype{{format={fmt}}}"
        c1 = time.process_time()
        run_pipeline(program, spec, ctx, verify_each=False)
        t2 = time.perf_counter()
        # [peak RSS, CPU seconds of the pipeline]: the largest rank's of each
        top = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                            time.process_time() - c1], dtype=torch.float64)
        if group is not None:
            top = all_reduce(top, "max", group)
        if group is None or group.is_writer:
            seconds = {p["pass"].split("{")[0]: p["seconds"] for p in ctx.report["passes"]}
            Path(out).write_text(json.dumps({
                "capture_s": round(t1 - t0, 1), "pass_s": round(seconds[pass_name], 1),
                "pipeline_s": round(t2 - t1, 1), "max_rank_rss_mib": round(float(top[0])),
                "max_rank_cpu_s": round(float(top[1]), 1),
                "threads": torch.get_num_threads()}))
        return 0

    return run_rank(body)


def measure(size: str, pass_name: str, fmt: str, nproc: int, samples: int,
            seqlen: int, threads: int = 0) -> dict:
    """One run as `nproc` processes (1: a plain process, `threads` > 0: with that many
    threads); the row for the results."""
    out = Path(f"/tmp/qc-distributed-scaling-{os.getpid()}.json")
    out.unlink(missing_ok=True)
    argv = [size, pass_name, fmt, str(samples), str(seqlen), str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                          os.environ.get("PYTHONPATH", "")])}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if nproc == 1:
        cmd = ["nice", "-n", "10", sys.executable, __file__, "--child", *argv]
    else:
        launcher = ("import sys; from qcompiler.launch import launch; "
                    f"sys.exit(launch({nproc}, ['--child', *sys.argv[1:]], "
                    "module='distributed_scaling'))")
        cmd = ["nice", "-n", "10", sys.executable, "-c", launcher, *argv]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode or not out.exists():
        raise SystemExit(f"run failed ({size} {pass_name} x{nproc}):\n{proc.stderr[-3000:]}")
    info = json.loads(out.read_text())
    out.unlink()
    return {"size": size, "pass": pass_name, "format": fmt, "nproc": nproc,
            "samples": samples, "seqlen": seqlen, "wall_s": round(wall, 1), **info,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": row_machine.describe(),
            "load": os.getloadavg()[0]}


def render(rows: list[dict]) -> list[str]:
    """The table for calibration_scaling.md, with the speed-up of each N-process row."""
    lines = [
        "## Calibration over several processes (torch.distributed, gloo)", "",
        "Command: `python bench/calibration_scaling.py --nproc 2 [--passes P --samples S "
        "--seqlen L]` (bench/distributed_scaling.py): the whole-model pipeline "
        "`canonicalize,<pass>,lower-datatype` as one process with all CPU threads, as one "
        "process with one thread, and as N ranks launched as `qcompile --nproc N` does "
        "(CPUs/N threads each), every process under `nice -n 10`; docs/DISTRIBUTED.md says "
        "what is split. Capture is not split (each rank captures the model).", "",
        row_machine.line(rows, "x86_64, 2 CPUs, Linux 6.18.44-fc-v1098, Python 3.11.7, torch "
                         "2.13.0+cpu at the file's last render before then") + " "
        "The machine was shared with other jobs while these ran (load average per row; 2 = "
        "idle for 2 CPUs), so the seconds are upper bounds and only the ratios mean something. "
        "Under such load a process with 2 threads loses far more than two 1-thread processes "
        "(its threads wait for each other whenever one is descheduled): the speed-up against "
        "the all-threads row overstates what an idle machine would show; the one against the "
        "one-thread row is the fairer number (at most N). The CPU columns (1-thread processes "
        "only) do not depend on the load: the busiest rank's CPU seconds in the pipeline "
        "bound what an idle machine would take, so their ratio estimates the idle speed-up "
        "(communication waits are not CPU time and are left out). n/a: the row predates that "
        "column.", "",
        "| size | pass | format | S x L | processes | threads/rank | pass (s) | pipeline (s) "
        "| wall (s) | pass speed-up vs 1 process, all threads | vs 1 process, 1 thread "
        "| pipeline CPU (s), busiest rank | CPU speed-up vs 1 thread "
        "| max rank RSS (MiB) | load | date |",
        "|---" * 16 + "|",
    ]
    cpus = os.cpu_count() or 1
    every = {_key(r): r for r in rows if r["nproc"] == 1 and r["threads"] == cpus}
    single = {_key(r): r for r in rows if r["nproc"] == 1 and r["threads"] == 1}
    for r in rows:
        ups = []
        for base in (every, single):
            b = base.get(_key(r))
            ups.append(f"{b['pass_s'] / r['pass_s']:.2f}x" if b and r["pass_s"] else "-")
        b, cpu = single.get(_key(r)), r.get("max_rank_cpu_s")
        cpu_up = f"{b['max_rank_cpu_s'] / cpu:.2f}x" if b and cpu and b.get(
            "max_rank_cpu_s") and r["threads"] == 1 else "-"
        lines.append(f"| {r['size']} | {r['pass']} | {r['format']} "
                     f"| {r['samples']} x {r['seqlen']} | {r['nproc']} | {r['threads']} "
                     f"| {r['pass_s']} | {r['pipeline_s']} | {r['wall_s']} | {ups[0]} | {ups[1]} "
                     f"| {cpu if cpu is not None else 'n/a'} | {cpu_up} "
                     f"| {r['max_rank_rss_mib']} | {r['load']:.1f} | {r['date']} |")
    lines.append("")
    return lines


def _key(r: dict) -> tuple:
    return (r["size"], r["pass"], r["format"], r["samples"], r["seqlen"])


def run(sizes: str, passes: str, fmt: str, nproc: int, samples: int, seqlen: int,
        only_single_thread: bool = False) -> list[dict]:
    """Measure 1 process (all threads, then one), then `nproc` processes, per size and pass
    (`only_single_thread`: not the all-threads one); rows replace earlier ones."""
    rows = json.loads(ROWS.read_text()) if ROWS.exists() else []
    for size in sizes.split(","):
        for pass_name in passes.split(","):
            for n, threads in ((1, 0), (1, 1), (nproc, 0)):
                if only_single_thread and (n, threads) == (1, 0):
                    continue
                row = measure(size, pass_name, fmt, n, samples, seqlen, threads)
                print(json.dumps(row), flush=True)
                rows = [r for r in rows if (_key(r), r["nproc"], r["threads"])
                        != (_key(row), n, row["threads"])] + [row]
                ROWS.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        a = sys.argv[2:]
        raise SystemExit(child(a[0], a[1], a[2], int(a[3]), int(a[4]), a[5]))
    raise SystemExit("run me through bench/calibration_scaling.py --nproc N")

"""Fixed cost of a small compile: `qcompile zoo:stories260k --format razer4` end to end.

    python bench/fixed_cost.py                       # 3 runs + a phase breakdown -> results
    python bench/fixed_cost.py --runs 5 --threads 1 --label after --out -

Each run is a fresh process (imports included, as a user pays them), after one warm-up run that
fills the zoo's capture cache (~/.cache/qcompiler/zoo). Recorded per run: wall seconds and the
child's user + sys CPU seconds (getrusage). The CPU time is the better number on a shared
machine: wall time grows with the load (the load average before and after is recorded), and
with torch's default 2 threads a busy machine also inflates CPU time (OpenMP threads spin while
they wait for a core), so `--threads 1` (OMP_NUM_THREADS=1) measures the work itself.
A last run reports where the time goes: imports, capture, passes, the ExportedProgram for the
artifact (`Program.export`: a re-export by torch.export before qcompiler/lift.py, lifted from the
annotated graph since) and the rest of the write.

stories260k's MLP width 172 is not a multiple of a group size razer4 accepts, so the command
carries `-g 32 --on-indivisible pad` (as bench/accuracy.py does). Rows go to
bench/results/fixed_cost.json keyed by label and are rendered into fixed_cost.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "fixed_cost.md"
ARGS = ["zoo:stories260k", "--format", "razer4", "-g", "32", "--on-indivisible", "pad", "-q"]
MAIN = "import sys; from qcompiler.cli.qcompile import main; sys.exit(main())"
PHASES = r'''
import json, resource, sys, time
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
marks, last = [], [time.perf_counter(), cpu()]
def mark(name):
    t, c = time.perf_counter(), cpu()
    marks.append([name, round(t - last[0], 3), round(c - last[1], 3)]); last[:] = [t, c]
import torch; mark("import torch")
from qcompiler import driver, program as prog
from qcompiler.cli import qcompile; mark("import qcompiler")
def wrap(owner, attr, before, after):
    f = getattr(owner, attr)
    def w(*a, **k):
        mark(before); r = f(*a, **k); mark(after); return r
    setattr(owner, attr, w)
wrap(driver, "capture_model", "start up", "capture")
wrap(prog.Program, "export", "write: before export", "write: Program.export")
wrap(driver, "_write", "passes", "write: rest")
qcompile.main(sys.argv[1:])
print(json.dumps([m for m in marks if not m[0].startswith("write: before")]))
'''


def child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def timed_run(code: str, out: Path, threads: int | None, preimport: str = "") -> dict:
    """One fresh process: wall seconds, user + sys CPU seconds, stdout. `preimport`: modules
    the child imports first (what an import the compile no longer does used to cost)."""
    if preimport:
        code = f"import {preimport}\n" + code
    shutil.rmtree(out, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *ARGS, "-o", str(out)],
                          capture_output=True, text=True, env=child_env(threads), cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"error: the compile failed: {done.stderr.strip()[-500:]}")
    return {"wall": round(wall, 2), "user": round(after.ru_utime - before.ru_utime, 2),
            "sys": round(after.ru_stime - before.ru_stime, 2), "stdout": done.stdout}


def measure(runs: int, threads: int | None, preimport: str = "") -> dict:
    with tempfile.TemporaryDirectory(prefix="qc-fixed-") as tmp:
        out = Path(tmp) / "out.qc"
        timed_run(MAIN, out, threads)  # warm-up: fills the zoo capture cache
        load_before = os.getloadavg()[0]
        rows = [timed_run(MAIN, out, threads, preimport) for _ in range(runs)]
        last = timed_run(PHASES, out, threads, preimport)["stdout"].strip().splitlines()[-1]
        phases = json.loads(last)
        load_after = os.getloadavg()[0]
    for r in rows:
        r.pop("stdout")
    return {"runs": rows, "phases": phases, "load": [load_before, load_after]}


def versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers", "safetensors"))


def render(results: dict) -> str:
    lines = ["# Fixed cost: qcompile zoo:stories260k --format razer4", "",
             __doc__.split("\n\n", 1)[1].strip(), "",
             "| label | threads | date | wall s (min / median) | user+sys CPU s (min / median) "
             "| load avg before / after | phases: wall s / CPU s |",
             "|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        walls = sorted(x["wall"] for x in r["runs"])
        cpus = sorted(round(x["user"] + x["sys"], 2) for x in r["runs"])
        phases = "; ".join(f"{n} {w:.1f}/{c:.1f}" for n, w, c in r["phases"])
        lines.append(f"| {label} | {r['threads'] or 'default'} | {r['date']} | {walls[0]:.1f} / "
                     f"{walls[len(walls) // 2]:.1f} | {cpus[0]:.1f} / {cpus[len(cpus) // 2]:.1f} "
                     f"| {r['load'][0]:.1f} / {r['load'][1]:.1f} | {phases} |")
    lines += ["", "Commands, machines and versions per label:", ""]
    for label, r in results.items():
        pre = f" (child imports {r['preimport']} first)" if r.get("preimport") else ""
        lines.append(f"- {label}: `{r['command']}`{pre} on {r['machine']}; {r['versions']}"
                     + (f". {r['note']}" if r.get("note") else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the child")
    p.add_argument("--label", default="current")
    p.add_argument("--preimport", default="", help="modules the child imports first, e.g. "
                   "transformers (the 'before' row: the write imported it for its version)")
    p.add_argument("--out", default=str(RESULTS), help="results file, or - for stdout only")
    p.add_argument("--note", default="", help="a sentence recorded with the row")
    args = p.parse_args(argv)
    row = measure(args.runs, args.threads, args.preimport)
    row.update(threads=args.threads, preimport=args.preimport, note=args.note,
               date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
               command="qcompile " + " ".join(ARGS), versions=versions(),
               machine=f"{platform.platform()}, {os.cpu_count()} CPUs, Python "
                       f"{platform.python_version()}")
    if args.out == "-":
        print(render({args.label: row}))
        return 0
    store = Path(args.out).with_suffix(".json")
    results = json.loads(store.read_text()) if store.exists() else {}
    results[args.label] = row
    store.write_text(json.dumps(results, indent=1))
    Path(args.out).write_text(render(results))
    print(render({args.label: row}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

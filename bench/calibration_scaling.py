"""Calibration time and peak memory of clip and gptq on random-weight Llama models.

    python bench/calibration_scaling.py                         # 0.1B, clip and gptq
    python bench/calibration_scaling.py --sizes 0.1B,0.5B --passes gptq --format int4

For each size the model is built from a config with seeded random weights (a Llama-architecture
model of the given shape; the numbers measured here do not depend on the weights' values),
then each pass runs in a fresh process under `/usr/bin/time -v` on 32 calibration sequences of
512 random token ids (seeded, given as explicit batches, so that sampling from the model is not
what is measured): `canonicalize,<pass>{format=F}` then `lower-datatype{format=F}`, which packs
the planned codes. Recorded: wall time of the whole child, the time of the calibrated pass alone
(from the pass manager's report), the child's peak RSS by the end of capture, its RSS once the
HF module is freed, and its maximum RSS over the whole run.

Sizes (hidden, intermediate, layers, heads, kv heads; vocab 32000, untied head, fp32 in memory):
0.1B = (768, 2048, 12, 12, 4) -> 125M parameters; 0.5B = (1536, 4096, 16, 12, 4) -> 0.50B.
The issue's targets for 0.5B: clip under 15 min, gptq under 45 min.

    python bench/calibration_scaling.py --layerwise --sizes 0.5B,1B,3B [--samples 8 --seqlen 128]

    python bench/calibration_scaling.py --nproc 2 [--passes gptq,clip]

measures the speed-up of calibrating over 2 processes (torch.distributed, gloo;
bench/distributed_scaling.py), a third table in the same file.

`--layerwise` measures instead the layer-wise `F-max` compile of a streamed checkpoint and its memory budget
(bench/layerwise_scaling.py has the details); its rows are a second table in the same file.
Results: bench/results/calibration_scaling.md (rows keyed by size and pass; a rerun replaces
its rows), with command, machine, date and versions.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import row_machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "calibration_scaling.md"
ROWS = ROOT / "bench" / "results" / "calibration_scaling.json"
LAYERWISE_ROWS = ROOT / "bench" / "results" / "calibration_scaling_layerwise.json"
# what the file said of its machine before rows recorded their own (render of 2026-12-03)
LEGACY_MACHINE = ("the file's last render before then named x86_64, 2 CPUs, Linux "
                  "6.18.44-fc-v1098; Python 3.11.7, torch 2.13.0+cpu, transformers 5.24.0")
SIZES = {"0.1B": (768, 2048, 12, 12, 4), "0.5B": (1536, 4096, 16, 12, 4)}
VOCAB, SAMPLES, SEQLEN = 32000, 32, 512
TARGET_MIN = {"clip": 15, "gptq": 45}  # the limits for 0.5B, minutes


def child(size: str, pass_name: str, fmt: str) -> None:
    """Runs in the measured process: build, capture, calibrate + quantize, print JSON."""
    import torch
    import transformers

    from qcompiler.calibration import CalibrationConfig
    from qcompiler.capture import capture_hf_model
    from qcompiler.pass_manager import run_pipeline
    from qcompiler.passes_base import PassContext

    hidden, inter, layers, heads, kv = SIZES[size]
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
        tie_word_embeddings=False, use_cache=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = transformers.LlamaForCausalLM(cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    program = capture_hf_model(model, source=f"llama-{size}")
    del model
    gc.collect()
    capture_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    after_capture = _rss_mib()
    t1 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(3, VOCAB, (1, SEQLEN), generator=g) for _ in range(SAMPLES)]
    ctx = PassContext(quiet=True, calibration=CalibrationConfig(batches=batches))
    spec = f"canonicalize,{pass_name}{{format={fmt}}},lower-datatype{{format={fmt}}}"
    run_pipeline(program, spec, ctx, verify_each=False)
    t2 = time.perf_counter()
    seconds = {p["pass"].split("{")[0]: p["seconds"] for p in ctx.report["passes"]}
    planned = sum(1 for e in ctx.report["layers"] if e.get("planned_by") == pass_name)
    print(json.dumps({"params": params, "capture_s": round(t1 - t0, 1),
                      "capture_peak_mib": round(capture_peak), "after_capture_mib": after_capture,
                      "pass_s": round(seconds[pass_name], 1),
                      "lower_s": round(seconds["lower-datatype"], 1),
                      "pipeline_s": round(t2 - t1, 1), "planned": planned}))


def _rss_mib() -> int:
    """Resident set size of this process now."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20)


def measure(size: str, pass_name: str, fmt: str) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--child", size, pass_name, fmt]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"child failed ({size} {pass_name}):\n{proc.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", proc.stderr).group(1))
              for kind in ("User", "System"))
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"size": size, "pass": pass_name, "format": fmt, "wall_s": round(wall, 1),
            "peak_rss_mib": round(rss_kb / 1024), "cpu_s": round(cpu, 1), **info,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load": os.getloadavg()[0], "machine": row_machine.describe()}


def render(rows: list[dict]) -> str:
    lines = [
        "# Calibration scaling: clip and gptq on random-weight Llama models", "",
        f"Command: `python bench/calibration_scaling.py` (see its docstring); {SAMPLES} "
        f"calibration sequences x {SEQLEN} tokens (random ids, seeded), each pass in a fresh "
        "process under `/usr/bin/time -v`, then lower-datatype packing the planned codes.", "",
        row_machine.line(rows, LEGACY_MACHINE) + " The CPUs may be shared with other jobs: the "
        "load average is recorded per row (about 2 = this job alone on the 2 CPUs; more means "
        "the times are upper bounds). Peak RSS does not depend on the load.", "",
        "Memory columns: `capture peak` is the process's peak RSS by the end of building and "
        "capturing the model, `after capture` its RSS then (the fp32 weights, which the "
        "exported program shares with the HF module, plus about 0.5 GB of Python, torch and "
        "transformers), `peak` the whole run's: on top of that the pass holds the "
        "fake-quantized copy of every planned weight (weight plans keep the fp original for "
        "later passes), the calibration row samples (clip, 2048 rows per distinct linear "
        "input) or Hessians (gptq), and the packed codes.", "",
        "| size | params | pass | format | pass time (s) | lower-datatype (s) | child wall (s) "
        "| child CPU (s) | capture peak (MiB) | after capture (MiB) | peak RSS (MiB) "
        "| layers planned | load | date |",
        "|---" * 14 + "|",
    ]
    for r in rows:
        lines.append(f"| {r['size']} | {r['params'] / 1e6:.0f}M | {r['pass']} | {r['format']} "
                     f"| {r['pass_s']} | {r['lower_s']} | {r['wall_s']} "
                     f"| {r.get('cpu_s', 'n/a')} | {r.get('capture_peak_mib', 'n/a')} "
                     f"| {r.get('after_capture_mib', 'n/a')} | {r['peak_rss_mib']} "
                     f"| {r['planned']} | {r['load']:.1f} | {r['date']} |")
    lines += ["", "Targets from the issue (0.5B, 32 x 512 tokens): clip < 15 min, gptq < 45 min."]
    for r in rows:
        target = TARGET_MIN.get(r["pass"]) if r["size"] == "0.5B" else None
        if target is not None:
            verdict = "met" if r["pass_s"] < 60 * target else "MISSED"
            lines.append(f"- 0.5B {r['pass']}: {r['pass_s'] / 60:.1f} min (target < {target} "
                         f"min): {verdict}, at load {r['load']:.1f}.")
    if not any(r["size"] == "0.5B" for r in rows):
        lines += ["", "0.5B not measured yet: `python bench/calibration_scaling.py --sizes 0.5B`."]
    if any("cpu_s" not in r or "capture_peak_mib" not in r for r in rows):
        lines += ["", "n/a: the row was recorded before the bench measured that column."]
    lines.append("")
    if LAYERWISE_ROWS.exists():
        sys.path.insert(0, str(Path(__file__).parent))
        import layerwise_scaling

        lines += layerwise_scaling.render(json.loads(LAYERWISE_ROWS.read_text()))
    distributed_rows = ROOT / "bench" / "results" / "calibration_scaling_distributed.json"
    if distributed_rows.exists():
        sys.path.insert(0, str(Path(__file__).parent))
        import distributed_scaling

        lines += [""] + distributed_scaling.render(json.loads(distributed_rows.read_text()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        child(*argv[1:4])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="0.1B")
    p.add_argument("--passes", default="clip,gptq")
    p.add_argument("--format", default="razer4")
    p.add_argument("--render", action="store_true", help="only rewrite the table from the rows")
    p.add_argument("--layerwise", action="store_true",
                   help="measure layer-wise F-max on streamed checkpoints (0.5B, 1B, 3B)")
    p.add_argument("--samples", type=int, default=8, help="--layerwise: calibration sequences")
    p.add_argument("--seqlen", type=int, default=128, help="--layerwise: tokens per sequence")
    p.add_argument("--layers", type=int, default=0,
                   help="--layerwise: keep this many decoder layers (0: the full depth)")
    p.add_argument("--calib-inputs", choices=["quantized", "fp"], default="quantized")
    p.add_argument("--nproc", type=int, default=0,
                   help="measure 1 against N processes (bench/distributed_scaling.py); "
                        f"--samples/--seqlen default to {SAMPLES} x {SEQLEN} there")
    p.add_argument("--single-thread-only", action="store_true",
                   help="--nproc: leave out the one-process all-threads run")
    args = p.parse_args(argv)
    if args.nproc:
        sys.path.insert(0, str(Path(__file__).parent))
        import distributed_scaling

        given = {a.split("=")[0] for a in argv}
        distributed_scaling.run(args.sizes, args.passes, args.format, args.nproc,
                                args.samples if "--samples" in given else SAMPLES,
                                args.seqlen if "--seqlen" in given else SEQLEN,
                                args.single_thread_only)
        RESULTS.write_text(render(json.loads(ROWS.read_text())))
        return 0
    if args.render:
        RESULTS.write_text(render(json.loads(ROWS.read_text())))
        return 0
    if args.layerwise:
        return _layerwise(args)
    rows = json.loads(ROWS.read_text()) if ROWS.exists() else []
    for size in args.sizes.split(","):
        for pass_name in args.passes.split(","):
            row = measure(size, pass_name, args.format)
            print(json.dumps(row), flush=True)
            rows = [r for r in rows if (r["size"], r["pass"], r["format"])
                    != (size, pass_name, args.format)] + [row]
            ROWS.write_text(json.dumps(rows, indent=1) + "\n")
            RESULTS.write_text(render(rows))
    return 0


def _layerwise(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    import layerwise_scaling

    sequential = args.calib_inputs == "quantized"
    for size in args.sizes.split(","):
        row = layerwise_scaling.measure(size, args.format, args.samples, args.seqlen,
                                        args.layers or None, sequential)
        print(json.dumps(row), flush=True)
        # read now, not at the start: rows that runs in parallel wrote meanwhile stay; earlier
        # rows of the same settings stay too (dated: they show what each change did)
        rows = json.loads(LAYERWISE_ROWS.read_text()) if LAYERWISE_ROWS.exists() else []
        rows.append(row)
        LAYERWISE_ROWS.write_text(json.dumps(rows, indent=1) + "\n")
        RESULTS.write_text(render(json.loads(ROWS.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""SmolLM2-135M on WikiText-2: perplexity and KL of every format × pipeline, and the claims.

    python bench/accuracy_smollm2.py                 # the full matrix at the spec's sizes
    python bench/accuracy_smollm2.py --render        # rewrite the .md from the saved rows
    python bench/accuracy_smollm2.py --jobs 2 ...    # two worker processes (2 idle cores)

SmolLM2-135M's linear weights come from llama.cpp Q4_1 (blocks of 32): every number is of that
model, as the results file says beside the numbers.

Evaluation: `--eval-windows` non-overlapping windows of `--window` tokens from the start of
wiki.test.raw, each starting with BOS (qcompiler/text_data.py, the same cut as `qcompile eval
--text`), loss over every predicted token. The fp model's log-probabilities are computed once
and cached (memory and `--cache`), so each row costs one forward of the quantized model per
window, which gives its perplexity, KL(P_fp ‖ P_quant) and top-1 agreement together.
Calibration: `--calib-samples` sequences of `--calib-seqlen` tokens (BOS + text) drawn by the
calibration seed from the second half of the file's lines (never evaluated on); every
calibrated row runs once per seed (`--seeds`) and reports the mean and the spread (max - min).
The calibration statistics are of the fp model (the calibrated pass runs before lower-datatype),
so rows of one method and seed share them (qcompiler/stats_memo.py; the plan orders the rows
so): one calibration forward pass per method and seed instead of one per row.

The run writes the rows to OUT.json after every (row, seed) and re-renders OUT.md, so a stop
loses at most the task in flight; run the same command again to resume (finished tasks are
skipped). `--stop-at HH:MM` (UTC) starts no task after that time. Order of the tasks:
bench/smollm2_plan.py (the claims' rows first).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import smollm2_plan as plan  # noqa: E402
import smollm2_report as report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "accuracy-smollm2.md"
TEXT = ROOT.parent / "shared" / "data" / "wikitext2" / "wiki.test.raw"
CACHE = Path(os.environ.get("QCOMPILER_CACHE_DIR") or Path.home() / ".cache" / "qcompiler")


# ---- data ----------------------------------------------------------------------------------
def calibration_batches(text: str, tokenizer, samples: int, seqlen: int, seed: int) -> list:
    """`samples` sequences of `seqlen` tokens (BOS first when the tokenizer has one) from
    non-overlapping positions of the second half of the lines, chosen by `seed`."""
    from qcompiler.errors import QCompilerError
    from qcompiler.text_data import bos_of, calibration_part, encode

    ids = encode(tokenizer, calibration_part(text))
    bos_id, _ = bos_of(tokenizer)
    body = seqlen - (bos_id is not None)
    starts = list(range(0, len(ids) - body + 1, body))
    if len(starts) < samples:
        raise QCompilerError(f"the calibration half has {len(ids)} tokens, fewer than "
                             f"{samples} x {body}; lower --calib-samples or --calib-seqlen")
    order = torch.randperm(len(starts), generator=torch.Generator().manual_seed(seed))
    out = []
    for i in order[:samples].tolist():
        chunk = ids[starts[i]:starts[i] + body]
        if bos_id is not None:
            chunk = torch.cat([torch.tensor([bos_id], dtype=chunk.dtype), chunk])
        out.append(chunk[None].clone())
    return out


def reference_logprobs(reference, windows: list[torch.Tensor], cache: Path | None) -> list:
    """The fp model's log-probabilities per window (float16, [T, V]), computed once per
    (model, windows) and kept in `cache` for reruns."""
    digest = hashlib.sha256(b"".join(w.numpy().tobytes() for w in windows)).hexdigest()[:16]
    name = f"bench-ref-{reference.meta.get('name', 'model')}-{digest}.safetensors"
    path = cache / name if cache else None
    if path is not None and path.is_file():  # safetensors: a cache file is data, never code
        stored = load_file(str(path))
        return [stored[str(i)] for i in range(len(stored))]
    out = []
    with torch.no_grad():
        for w in windows:
            out.append(torch.log_softmax(reference(w)[0].float(), -1).half())
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({str(i): t.contiguous() for i, t in enumerate(out)}, str(path.with_suffix(".tmp")))
        os.replace(path.with_suffix(".tmp"), path)
    return out


def score(program, windows: list[torch.Tensor], ref: list[torch.Tensor]) -> dict:
    """Perplexity, KL(P_fp ‖ P_q) mean and p99, top-1 agreement, in one forward per window."""
    nll, kls, agree = [], [], []
    with torch.no_grad():
        for w, r in zip(windows, ref):
            q = torch.log_softmax(program(w)[0].float(), -1)
            r = r.float()
            nll.append(-q[:-1].gather(-1, w[0, 1:, None])[:, 0].double())
            kls.append((r.exp() * (r - q)).sum(-1).clamp_min(0).double())
            agree.append((r.argmax(-1) == q.argmax(-1)).double())
    kl = torch.cat(kls)
    return {"perplexity": float(torch.cat(nll).mean().exp()), "kl_mean": float(kl.mean()),
            "kl_p99": float(torch.quantile(kl, 0.99)), "top1": float(torch.cat(agree).mean())}


def fp_row(windows: list[torch.Tensor], ref: list[torch.Tensor]) -> dict:
    nll = torch.cat([-r[:-1].float().gather(-1, w[0, 1:, None])[:, 0].double()
                     for w, r in zip(windows, ref)])
    return {"key": "fp", "format": "fp32", "method": "none", "bpw": 32.0, "group": None,
            "pipeline": "(the fp32 model, no passes)", "tier": 0, "calibrated": False,
            "runs": [{"seed": None, "perplexity": float(nll.mean().exp()), "kl_mean": 0.0,
                      "kl_p99": 0.0, "top1": 1.0, "seconds": 0.0}]}


# ---- one task ------------------------------------------------------------------------------
def run_task(load, row: plan.Row, calibration, windows, ref) -> dict:
    """Compile `row` (with the seed's calibration batches, if any) and score it."""
    from qcompiler.calibration import CalibrationConfig
    from qcompiler.dequantized_linears import dequantize_linears
    from qcompiler.driver import compile

    start = time.perf_counter()
    config = CalibrationConfig(batches=calibration) if calibration is not None else None
    result = compile(load(), pipeline=row.pipeline, quiet=True, calibration=config)
    program = result.program
    dequantize_linears(program.gm)  # the same numbers, without dequantizing at every call
    program.recompile()
    compiled = time.perf_counter() - start
    metrics = score(program, windows, ref)
    return {**metrics, "compile_seconds": compiled,
            "seconds": time.perf_counter() - start}


def new_row(row: plan.Row) -> dict:
    return {"key": row.key, "format": row.format, "method": row.method, "act": row.act,
            "kv": row.kv, "group": row.group, "bpw": plan.bits_per_weight(row.format),
            "pipeline": row.pipeline, "tier": row.tier, "calibrated": row.calibrated, "runs": []}


def run(args, load, tokenizer, text: str, state: dict, save) -> None:
    """Every task not yet in `state["rows"]`, in plan order, saving after each."""
    from qcompiler.text_data import describe, evaluation_windows

    cut = evaluation_windows(text, tokenizer, window=args.window, count=args.eval_windows)
    state["evaluation"] = describe(cut)
    state["eval_tokens"] = cut.predicted
    reference = load()
    ref = reference_logprobs(reference, cut.windows, None if args.no_cache else CACHE)
    del reference
    rows = state["rows"]
    rows.setdefault("fp", fp_row(cut.windows, ref))
    save()
    only = set(args.only.split(",")) if args.only else None
    todo = []
    for row, seed in plan.tasks(args.seeds, only):
        entry = rows.setdefault(row.key, new_row(row))
        if "error" not in entry and not any(r["seed"] == (seed if row.calibrated else None)
                                            for r in entry["runs"]):
            todo.append((row, seed))
    work = _Work(args, load, tokenizer, text, cut.windows, ref)
    for row, seed, result in run_units(work, units(todo), args.jobs):
        entry = rows[row.key]
        if "error" in result:  # a pass that cannot do this model: the row says why, run on
            entry["error"] = result["error"]
        else:
            entry["runs"].append({"seed": seed if row.calibrated else None, **result})
        save()


def units(todo: list[tuple[plan.Row, int]]) -> list[list[tuple[plan.Row, int]]]:
    """Consecutive calibrated tasks of one method and seed form a unit, which one process runs
    in order so that its rows share the method's statistics (qcompiler/stats_memo.py); every
    other task is a unit of its own."""
    out: list[list[tuple[plan.Row, int]]] = []
    for row, seed in todo:
        prev = out[-1][-1] if out else None
        if (prev is not None and row.calibrated and prev[0].calibrated
                and (prev[0].method, prev[1]) == (row.method, seed)):
            out[-1].append((row, seed))
        else:
            out.append([(row, seed)])
    return out


class _Work:
    """What every task needs: the model loader, tokenizer, text, evaluation windows and the fp
    model's log-probabilities. With --jobs the worker processes inherit it by fork."""

    def __init__(self, args, load, tokenizer, text, windows, ref) -> None:
        self.args, self.load, self.tokenizer, self.text = args, load, tokenizer, text
        self.windows, self.ref = windows, ref
        self.calibrations: dict[int, list] = {}
        self.stopped = False

    def calibration(self, seed: int) -> list:
        if seed not in self.calibrations:
            a = self.args
            self.calibrations[seed] = calibration_batches(self.text, self.tokenizer,
                                                          a.calib_samples, a.calib_seqlen, seed)
        return self.calibrations[seed]

    def past_stop(self) -> bool:
        """Past --stop-at (said once per process)."""
        stop = self.args.stop_at
        if not self.stopped and stop and datetime.now(timezone.utc).strftime("%H:%M") >= stop:
            print(f"stop: it is past {stop} UTC", file=sys.stderr, flush=True)
            self.stopped = True
        return self.stopped

    def run_unit(self, unit: list[tuple[plan.Row, int]], out: Callable[[tuple], None]) -> int:
        """The unit's tasks in order, sharing statistics, each (row, seed, metrics or
        {"error"}) handed to `out` when it finishes; stops at --stop-at. Returns how many
        were handed out."""
        from qcompiler import stats_memo

        sent = 0
        with stats_memo.reuse(max_entries=2) as counts:
            for row, seed in unit:
                if self.past_stop():
                    break
                hits = counts["hits"]
                calibration = self.calibration(seed) if row.calibrated else None
                try:
                    metrics = run_task(self.load, row, calibration, self.windows, self.ref)
                    metrics["stats_reused"] = counts["hits"] > hits
                except Exception as e:
                    traceback.print_exc()
                    first = (str(e).strip().splitlines() or [""])[0][:300]
                    out((row, seed, {"error": f"{type(e).__name__}: {first}"}))
                    sent += 1
                    continue
                print(f"{row.key:32} seed {seed}: ppl {metrics['perplexity']:.3f} KL "
                      f"{metrics['kl_mean']:.4f} ({metrics['seconds']:.0f}s, compile "
                      f"{metrics['compile_seconds']:.0f}s, statistics "
                      f"{'reused' if metrics['stats_reused'] else 'collected'})",
                      file=sys.stderr, flush=True)
                out((row, seed, metrics))
                sent += 1
        return sent


# what the forked workers inherit (multiprocessing pickles no closures): the work and the
# queue each finished task goes back on
_WORK: _Work | None = None
_DONE: Any = None


def _run_unit_in_worker(unit) -> int:
    torch.set_num_threads(1)
    assert _WORK is not None
    return _WORK.run_unit(unit, _DONE.put)


def run_units(work: _Work, todo: list, jobs: int):
    """Yield (row, seed, metrics or {"error"}) as tasks finish: in this process for one job,
    else in `jobs` forked processes of one torch thread each, a unit at a time, first unit
    first. Workers send each task back as it finishes and the parent writes every result (one
    writer; a stop loses only the tasks in flight)."""
    if jobs <= 1:
        for unit in todo:
            if work.past_stop():
                return
            done: list = []
            work.run_unit(unit, done.append)
            yield from done
        return
    import multiprocessing
    import queue

    global _WORK, _DONE
    ctx = multiprocessing.get_context("fork")
    _WORK, _DONE = work, ctx.Queue()
    with ctx.Pool(jobs) as pool:
        finished = pool.map_async(_run_unit_in_worker, todo, chunksize=1)
        got = 0
        while not finished.ready():
            try:
                yield _DONE.get(timeout=1.0)
                got += 1
            except queue.Empty:
                pass
        # a worker's exception surfaces here; the counts say what is still in the queue (a
        # worker's put is flushed by a feeder thread, possibly after its unit returned)
        for _ in range(sum(finished.get()) - got):
            yield _DONE.get()


def main(argv: list[str] | None = None, load=None, tokenizer=None) -> int:
    """`load` / `tokenizer` replace zoo:smollm2-135m and its tokenizer (tests)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", default=str(TEXT), help="WikiText-2 raw test split")
    p.add_argument("--window", type=int, default=512, help="evaluation window length")
    p.add_argument("--eval-windows", type=int, default=64, help="64 x 511 = 32.7k tokens")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--calib-seqlen", type=int, default=512)
    p.add_argument("--seeds", type=int, default=3, help="calibration seeds per calibrated row")
    p.add_argument("--only", help="comma-separated formats/methods to run (default: all)")
    p.add_argument("--stop-at", metavar="HH:MM", help="start no task after this UTC time")
    p.add_argument("--no-cache", action="store_true", help="do not cache fp log-probs on disk")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's, one per core); 1 on a shared "
                        "machine: GPTQ's and the scale searches' small ops then run up to 10x "
                        "faster than with threads that wait for a busy core")
    p.add_argument("--jobs", type=int, default=1,
                   help="worker processes (forked, one torch thread each); units of rows that "
                        "share statistics stay in one process. 2 on an idle 2-core machine")
    p.add_argument("--note", help="why this run is below the spec's sizes (kept in the file)")
    p.add_argument("--out", default=str(OUT), help="results .md (rows go to the .json beside)")
    p.add_argument("--render", action="store_true", help="only rewrite OUT from OUT.json")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.jobs > 1:
        if args.threads not in (None, 1):
            p.error("--jobs runs one torch thread per process; leave out --threads")
        args.threads = 1  # set before any torch work: forking a process with an OpenMP pool
    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    rows_file = out.with_suffix(".json")
    if args.render:
        out.write_text(report.markdown(json.loads(rows_file.read_text()), args.seeds))
        return 0
    command = "python bench/accuracy_smollm2.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    state = (json.loads(rows_file.read_text()) if rows_file.is_file()
             else {"rows": {}, "started": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}"})
    state.update(command=command.strip(), window=args.window, calib_samples=args.calib_samples,
                 calib_seqlen=args.calib_seqlen, seeds=args.seeds,
                 processes=f"{args.jobs} x {torch.get_num_threads()} torch thread(s)")
    if args.note:
        state["note"] = args.note

    def save() -> None:
        state["updated"] = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}"
        rows_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = rows_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        os.replace(tmp, rows_file)
        out.write_text(report.markdown(state, args.seeds))

    if load is None:
        from qcompiler import zoo
        from qcompiler.calibration import program_tokenizer

        base = zoo.load("smollm2-135m")  # loaded once; every row compiles a deep copy
        tokenizer = program_tokenizer(base)

        def load():
            return base.clone()
    text = Path(args.text).read_text(encoding="utf-8")
    torch.manual_seed(0)
    run(args, load, tokenizer, text, state, save)
    save()
    print(f"wrote {out} and {rows_file.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

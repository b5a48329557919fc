"""qcompiler's GPTQ and RTN side by side with llm-compressor's, on the same data and evaluator.

    python bench/peers.py                                  # both models, 3 seeds -> results
    python bench/peers.py --models stories260k --seeds 1 --out -
    python bench/peers.py --venv /tmp/peers-venv           # where llm-compressor is installed

The peer runs in its own virtual environment (default ~/.cache/qcompiler/peers-venv, made on
first use: `torch==2.13.*` first, so pip keeps the local CPU wheel, then
`llmcompressor==0.14.*`), in a subprocess (bench/peers_worker.py) that hands back the
dequantized weights as safetensors (never pickle). Both sides see:
- the same checkpoint: stories260k with its MLP width zero-padded from 172 to 192 (K of
  down_proj a multiple of 32; exact: a zero gate/up row gives a zero activation), and a
  random-init 512-wide Llama (seeded);
- the same calibration tokens: 16 sequences of 128 tokens sampled from the fp model (qcompiler's
  sampler, seed 0..seeds-1), written to safetensors for the peer;
- the same evaluation: KL(P_fp || P_quant) per next-token position and top-1 agreement on 8
  held-out sampled sequences (qcompiler.evaluate.compare), computed by setting each side's
  dequantized weights into the fp program.
Format: symmetric INT4 with one scale per group of `group` along K (int4-sym; g32 on
stories260k, g128 on the 512-wide Llama); lm_head stays in float on both sides.
Rows: RTN (no calibration, run once; ours both textbook, `search=rtn`, and by default, the
format's clip search), GPTQ at matched settings (ours: `search=rtn,
act-order=true`, theirs: GPTQModifier defaults, static act-order), our default GPTQ
(act-order, output-error group scales since 2026-12-03), our previous default (no act-order,
weight-error scales: `act-order=false,search=clip`), and ours with `search=half-step,
act-order=true` (qcompiler/gptq_core.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from peers_setup import VENV_DEFAULT, ensure_venv, peer_versions, prepare_model  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "peers.md"
WORKER = ROOT / "bench" / "peers_worker.py"
MODELS = {"stories260k": 32, "llama-512": 128}  # name -> group size
CALIB_SAMPLES, CALIB_SEQLEN, EVAL_SAMPLES, EVAL_SEQLEN = 16, 128, 8, 128


def our_pipelines(group: int) -> dict[str, str]:
    low = f"lower-datatype{{format=int4-sym,group-size={group}}}"
    q = f"format=int4-sym,group-size={group}"
    return {
        "rtn": f"canonicalize,dce,lower-datatype{{{q},search=rtn}},dce",
        "rtn (default)": f"canonicalize,dce,{low},dce",
        "gptq (matched)": f"canonicalize,dce,gptq{{{q},search=rtn,act-order=true}},{low},dce",
        "gptq (default)": f"canonicalize,dce,gptq{{{q}}},{low},dce",
        "gptq (previous default)": f"canonicalize,dce,gptq{{{q},act-order=false,search=clip}},"
                                   f"{low},dce",
        "gptq (half-step)": f"canonicalize,dce,gptq{{{q},search=half-step,act-order=true}},"
                            f"{low},dce",
    }


def dequantized_weights(program) -> dict[str, torch.Tensor]:
    """layer.weight -> the float weight each quantized linear of `program` computes with."""
    from qcompiler import ops

    gm, out = program.gm, {}
    for node in gm.graph.nodes:
        fmt = ops.format_of(node.target) if node.op == "call_function" else None
        if fmt is None:
            continue
        parts = node.args[1:-1]
        tensors = {k: program.get_tensor(str(p.target)) if hasattr(p, "target") else None
                   for k, p in zip(ops.PARTS, parts)}
        kw = node.kwargs
        w = ops.dequantize_weight(fmt, tensors, group_size=kw["group_size"], n=kw["n"],
                                  k=kw["k"], opts=kw.get("opts", ""))
        out[f"{kw['layer']}.weight"] = w.to(torch.float32)
    return out


def evaluate_weights(reference, weights: dict[str, torch.Tensor], sequences) -> dict:
    """KL and top-1 of the fp program with `weights` swapped in (the one evaluator)."""
    from qcompiler.evaluate import compare

    q = reference.clone()
    for name, w in weights.items():
        old = q.get_tensor(name)
        if old.shape != w.shape:
            raise ValueError(f"{name}: shape {tuple(w.shape)} != {tuple(old.shape)}")
        q.set_tensor(name, w.to(old.dtype))
    r = compare(q, reference, sequences, kind="causal-lm")
    return {"kl": r.kl_mean, "top1": r.top1_agreement, "layers": len(weights)}


def run_peer(venv: Path, model_dir: Path, calib: Path, method: str, group: int,
             out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    cmd = [str(venv / "bin" / "python"), str(WORKER), "--model", str(model_dir), "--calib",
           str(calib), "--method", method, "--group", str(group), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"peer failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")
    return load_file(str(out))


def run(models: list[str], seeds: int, venv: Path, work: Path,
        save: Path | None = None, methods: list[str] | None = None,
        peer: bool = True) -> list[dict]:
    """Every row; with `save`, the rows so far are rewritten there after each one (a long run
    cut short keeps what it measured: render it with --render). `methods` limits our rows,
    `peer=False` skips the peer's (to add rows to an earlier run's JSON)."""
    from safetensors.torch import save_file

    from qcompiler.calibration import CalibrationConfig, make_batches
    from qcompiler.capture import capture_hf_dir
    from qcompiler.driver import compile
    from qcompiler.evaluate import EVAL_SEED_OFFSET, sample_sequence

    rows = []
    for model in models:
        group = MODELS[model]
        model_dir = prepare_model(model, work)
        reference = capture_hf_dir(model_dir)
        vocab = reference.meta["config"]["vocab_size"]
        bos = reference.meta["config"].get("bos_token_id")
        evals = [sample_sequence(reference, vocab, EVAL_SEQLEN, EVAL_SEED_OFFSET + i, bos)
                 for i in range(EVAL_SAMPLES)]
        for seed in range(seeds):
            cfg = CalibrationConfig(samples=CALIB_SAMPLES, seqlen=CALIB_SEQLEN, seed=seed)
            batches = make_batches(reference, cfg)
            calib = work / f"{model}-calib-s{seed}.safetensors"
            save_file({f"seq{i:03d}": b.contiguous() for i, b in enumerate(batches)}, str(calib))
            for method, spec in our_pipelines(group).items():
                if (method.startswith("rtn") and seed) or (methods and method not in methods):
                    continue
                start = time.perf_counter()
                result = compile(capture_hf_dir(model_dir), pipeline=spec, quiet=True,
                                 calibration=CalibrationConfig(batches=batches))
                m = evaluate_weights(reference, dequantized_weights(result.program), evals)
                rows.append({"model": model, "group": group, "side": "qcompiler",
                             "method": method, "seed": seed, "pipeline": spec,
                             "seconds": time.perf_counter() - start, **m})
                print(f"{model} qcompiler {method} s{seed}: KL {m['kl']:.4f} "
                      f"top1 {m['top1']:.4f}", file=sys.stderr)
                _save(rows, save)
            for method in ("rtn", "gptq") if peer else ():
                if method == "rtn" and seed:
                    continue
                start = time.perf_counter()
                w = run_peer(venv, model_dir, calib, method, group,
                             work / f"{model}-{method}-s{seed}.safetensors")
                m = evaluate_weights(reference, w, evals)
                rows.append({"model": model, "group": group, "side": "llm-compressor",
                             "method": method if method == "rtn" else "gptq (matched)",
                             "seed": seed, "seconds": time.perf_counter() - start, **m})
                print(f"{model} llm-compressor {method} s{seed}: KL {m['kl']:.4f} "
                      f"top1 {m['top1']:.4f}", file=sys.stderr)
                _save(rows, save)
    return rows


def _save(rows: list[dict], path: Path | None) -> None:
    if path is not None:
        path.write_text(json.dumps(rows, indent=1))


def summarize(rows: list[dict]) -> list[dict]:
    """Mean KL/top-1 and KL spread (max - min over seeds) per model, side and method."""
    out: dict[tuple, dict] = {}
    for r in rows:
        key = (r["model"], r["side"], r["method"])
        s = out.setdefault(key, {"model": r["model"], "group": r["group"], "side": r["side"],
                                 "method": r["method"], "kls": [], "top1s": []})
        s["kls"].append(r["kl"])
        s["top1s"].append(r["top1"])
    for s in out.values():
        s["kl"] = sum(s["kls"]) / len(s["kls"])
        s["top1"] = sum(s["top1s"]) / len(s["top1s"])
        s["spread"] = max(s["kls"]) - min(s["kls"])
    methods = [*our_pipelines(32), "gptq (matched)"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    return sorted(out.values(), key=lambda s: (models.index(s["model"]), s["side"] != "qcompiler",
                                              methods.index(s["method"])))


def verdicts(summary: list[dict]) -> list[str]:
    """Ours (matched, default) against theirs, per model: a gap inside the seed spread is a tie."""
    lines = []
    for model in dict.fromkeys(s["model"] for s in summary):
        by = {(s["side"], s["method"]): s for s in summary if s["model"] == model}
        theirs = by.get(("llm-compressor", "gptq (matched)"))
        for method in ("rtn", "rtn (default)", "gptq (matched)", "gptq (default)",
                       "gptq (previous default)", "gptq (half-step)"):
            ours = by.get(("qcompiler", method))
            peer = by.get(("llm-compressor", "rtn")) if method.startswith("rtn") else theirs
            if ours is None or peer is None:
                continue
            gap = peer["kl"] - ours["kl"]  # > 0: ours is better
            noise = max(ours["spread"], peer["spread"])
            word = "better" if gap > 0 else "worse"
            if abs(gap) <= noise:
                word = f"tie (within the seed spread {noise:.3g})"
            lines.append(f"- {model}, ours {method} vs theirs "
                         f"{'rtn' if method.startswith('rtn') else 'gptq'}: KL {ours['kl']:.4f} vs "
                         f"{peer['kl']:.4f} ({gap:+.4f}): {word}")
    return lines


def markdown(rows: list[dict], command: str, venv: Path) -> str:
    import transformers

    summary = summarize(rows)
    lines = ["# GPTQ and RTN against llm-compressor", "",
             f"Command: `{command}`  ",
             f"Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}  ",
             f"Machine: {platform.platform()}, {torch.get_num_threads()} threads, Python "
             f"{platform.python_version()}  ",
             f"qcompiler side: torch {torch.__version__}, transformers "
             f"{transformers.__version__}  ",
             f"peer side: {peer_versions(venv)}", "",
             __doc__.split("\n\n", 2)[2].strip(), "",
             "KL: mean over next-token positions (lower is better); spread: max - min over "
             "calibration seeds.", "",
             "| model | group | side | method | KL mean | KL per seed | spread | top-1 |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['model']} | {s['group']} | {s['side']} | {s['method']} | "
                     f"{s['kl']:.4f} | {', '.join(f'{k:.4f}' for k in s['kls'])} | "
                     f"{s['spread']:.4f} | {s['top1']:.4f} |")
    lines += ["", "Verdicts:", "", *verdicts(summary), "", "Our pipelines:", ""]
    for spec in dict.fromkeys(r["pipeline"] for r in rows if "pipeline" in r):
        lines.append(f"- `{spec}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--venv", type=Path, default=VENV_DEFAULT)
    p.add_argument("--out", default=str(RESULTS), help="results file, or - for stdout")
    p.add_argument("--render", default=None, metavar="JSON[,JSON]",
                   help="only render the results file from rows saved by earlier runs")
    p.add_argument("--methods", default=None, metavar="M[,M]",
                   help=f"only these of our rows ({', '.join(our_pipelines(32))})")
    p.add_argument("--no-peer", action="store_true",
                   help="skip llm-compressor's rows (add ours to an earlier run via --render)")
    args = p.parse_args(argv)
    if args.render:
        rows = [r for f in args.render.split(",") for r in json.loads(Path(f).read_text())]
        command = " and ".join(dict.fromkeys(r.get("command", "") for r in rows))
        Path(args.out).write_text(markdown(rows, command, args.venv))
        Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))
        return 0
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        print(f"error: unknown model {unknown[0]}; choose from {', '.join(MODELS)}",
              file=sys.stderr)
        return 2
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    bad = [m for m in methods or () if m not in our_pipelines(32)]
    if bad:
        print(f"error: unknown method {bad[0]!r}; choose from {', '.join(our_pipelines(32))}",
              file=sys.stderr)
        return 2
    if not args.no_peer:
        ensure_venv(args.venv)
    command = "python bench/peers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    partial = None if args.out == "-" else Path(args.out).with_suffix(".partial.json")
    with tempfile.TemporaryDirectory(prefix="qc-peers-") as tmp:
        rows = run(models, args.seeds, args.venv, Path(tmp), partial, methods,
                   peer=not args.no_peer)
    for r in rows:
        r["command"] = command.strip()
    text = markdown(rows, command.strip(), args.venv)
    if args.out == "-":
        print(text)
    else:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))
        if partial is not None:
            partial.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Decode speed: compiled `generate` (KV cache) against HF's fp32 `generate`, side by side.

    python bench/decode.py --device cpu                        # stories260k, razer4 + int4, g32
    python bench/decode.py --model zoo:smollm2-135m --formats int4 --search rtn --new-tokens 32

For each format it compiles the model to an artifact (under --work-dir, reused when present),
loads it and times `model.generate` against the HF model's `generate` on the same prompt, batch
and machine, in this one process: greedy, exactly --new-tokens tokens (EOS ignored on both
sides), one warm-up run each, then --repeats rounds timing every run in turn (a shared machine's
load changes hit all alike), best round kept. The target (issue 11): on the CPU the
compiled model makes at least 1/3 of HF's tokens per second.

The CPU decode path dequantizes each weight once at load (qcompiler/decode_program.py); the
table reports what that costs: the float32 copies next to the packed weights.

Results go to bench/results/decode-<device>.md (table, command, machine, date, versions), one
section per model: a run replaces its model's section and keeps the others.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from compile_scaling import _versions, machine  # noqa: E402

TARGET = 1 / 3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="zoo:stories260k")
    p.add_argument("--formats", default="razer4,int4", help="comma-separated weight formats")
    p.add_argument("--group-size", type=int, default=32,
                   help="quantization group (default 32: stories260k has K = 64)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--search", default=None, help="lower-datatype search (e.g. rtn: a faster "
                   "compile; decode speed does not depend on it)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work-dir", default="/tmp/qc-bench-decode")
    p.add_argument("--out", default=None, help="results file (default "
                   "bench/results/decode-<device>.md)")
    args = p.parse_args(argv)
    import qcompiler
    from qcompiler.capture import capture

    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    reference = capture(args.model)
    config = reference.meta["config"]
    hf = _hf_model(args.model, reference).to(args.device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, int(config["vocab_size"]), (args.batch, args.prompt_len), generator=g)
    ids = ids.to(args.device)
    runs = {"hf": lambda: hf.generate(ids, attention_mask=torch.ones_like(ids),
                                      max_new_tokens=args.new_tokens,
                                      min_new_tokens=args.new_tokens, do_sample=False)}
    sizes = {}
    for fmt in [f for f in args.formats.split(",") if f]:
        name = (f"{args.model.replace(':', '_').replace('/', '_')}-{fmt}-g{args.group_size}"
                f"-{args.search or 'default'}")
        out = Path(args.work_dir) / name
        if not (out / "manifest.json").is_file():
            search = f",search={args.search}" if args.search else ""
            spec = (f"canonicalize,dce,lower-datatype{{format={fmt},group-size={args.group_size},"
                    f"on-indivisible=pad{search}}},dce")  # stories260k's K = 172 needs the padding
            qcompiler.compile(args.model, pipeline=spec, out=out, force=True, quiet=True)
        model = qcompiler.load(out, device=args.device)
        runs[fmt] = (lambda m: lambda: m.generate(ids, args.new_tokens, eos_token_id=[]))(model)
        buffers = model.decoder().gm.named_buffers()
        extra = sum(t.numel() * t.element_size() for n, t in buffers
                    if n.endswith("_dequantized_weight"))
        sizes[fmt] = (_mib((out / "weights.safetensors").stat().st_size), _mib(extra))
    rates = _rates(runs, args)
    hf_rate = rates.pop("hf")
    rows = [("HF fp32 generate", "", hf_rate, 1.0, "", "")]
    for fmt, rate in rates.items():
        rows.append((f"qcompiler {fmt} g{args.group_size}", fmt, rate, rate / hf_rate,
                     *sizes[fmt]))
        print(f"{fmt}: {rate:.1f} tok/s ({rate / hf_rate:.2f}x HF)", flush=True)
    print(f"HF fp32: {hf_rate:.1f} tok/s")
    path = Path(args.out) if args.out else ROOT / "bench" / "results" / f"decode-{args.device}.md"
    path.write_text(_merge(path, args.model, _report(args, rows, started, argv)))
    print(f"wrote {path}")
    return 0 if all(r[3] >= TARGET for r in rows[1:]) else 1


def _hf_model(source: str, program) -> torch.nn.Module:
    """The fp32 HF model the program was captured from."""
    from qcompiler import zoo

    if source.startswith("zoo:"):
        return zoo.build_module(source[4:])
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        program.meta["model_dir"], local_files_only=True, dtype=torch.float32).eval()


def _rates(runs: dict, args) -> dict[str, float]:
    """Generated tokens per second (all sequences) per run: one warm-up each, then
    args.repeats rounds that time every run in turn (so a load change on a shared machine
    hits all of them alike), best round kept."""
    best = {}
    with torch.no_grad():
        for fn in runs.values():
            fn()
        for _ in range(args.repeats):
            for key, fn in runs.items():
                if args.device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                out = fn()
                if args.device == "cuda":
                    torch.cuda.synchronize()
                best[key] = min(best.get(key, float("inf")), time.perf_counter() - start)
                new = out.shape[1] - args.prompt_len
                assert new == args.new_tokens, f"{key}: {new} tokens, expected {args.new_tokens}"
    return {key: args.batch * args.new_tokens / t for key, t in best.items()}


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def _merge(path: Path, model: str, section: str) -> str:
    """The results file with this model's section replaced (other models' sections kept)."""
    head = "# Decode speed: "
    old = path.read_text().split(head) if path.is_file() else []
    kept = [head + s for s in old if s.strip() and not s.startswith(f"{model} on ")]
    return "\n".join([section, *kept])


def _report(args, rows, started: str, argv) -> str:
    command = "python bench/decode.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"# Decode speed: {args.model} on {args.device}", "",
        f"Greedy `generate`, batch {args.batch}, prompt {args.prompt_len} tokens, "
        f"{args.new_tokens} new tokens, best of {args.repeats} interleaved rounds after a warm-up; "
        f"torch threads: {torch.get_num_threads()}. Target: compiled >= "
        f"{TARGET:.2f}x HF fp32.", "",
        "| run | tok/s | vs HF | packed weights (MiB) | dequantized fp32 copies (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, _, rate, ratio, packed, extra in rows:
        lines.append(f"| {name} | {rate:.1f} | {ratio:.2f}x | {packed} | {extra} |")
    lines += ["", f"- command: `{command}`", f"- date: {started}", f"- machine: {machine()}",
              f"- load: {os.getloadavg()[0]:.2f} (1-min load average at the end)",
              f"- versions: {_versions()}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

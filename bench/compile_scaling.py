"""Compile time and peak memory of streaming compilation, for Llama checkpoints of 0.1B-1B.

    python bench/compile_scaling.py                       # 0.1B, 0.5B, 1B; writes the results
    python bench/compile_scaling.py --sizes 0.1B --format int4 --work-dir /tmp/qc-bench

For each size it writes a random-weight Llama checkpoint (fp16 safetensors, two shards above
1 GB, tensor by tensor so the bench itself stays small), then compiles it in a fresh process
under `/usr/bin/time -v` and records wall time and maximum resident set size. The budget the
issue sets: peak RSS under 1 GiB + 25 % of the fp16 checkpoint size.

Results go to bench/results/compile_scaling.md (a table plus the machine it ran on). Each run
also records its rows in bench/results/compile_scaling.json, keyed by size and format, and the
table is rendered from all recorded rows of the format: sizes can be measured by separate
invocations (a 1B compile takes most of an hour on a small shared machine) and re-running one
size replaces only its row. Each row keeps its own date and command line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "compile_scaling.md"
SHARD_BYTES = 1 << 30
# name -> (hidden, intermediate, layers, heads, kv heads); vocab 32000, untied head.
SIZES = {
    "0.1B": (768, 2048, 12, 12, 4),
    "0.5B": (1536, 4096, 16, 12, 4),
    "1B": (2048, 5632, 22, 32, 4),  # TinyLlama-1.1B's shape
}
VOCAB = 32000
NOISE_NOTE = ("other jobs may share the CPUs while this runs (see the load average above), so "
              "wall and CPU times are noisy (CPU time also grows under contention: cache misses, "
              "hyperthread sharing); peak RSS does not depend on the load.")


def llama_config(size: str):
    import transformers

    hidden, inter, layers, heads, kv = SIZES[size]
    return transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
        tie_word_embeddings=False, torch_dtype="float16", bos_token_id=1, eos_token_id=2,
    )


def tensor_shapes(config) -> dict[str, tuple[int, ...]]:
    """The parameter names and shapes of LlamaForCausalLM, without building the model."""
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h),
                                          "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for layer in range(config.num_hidden_layers):
        p = f"model.layers.{layer}."
        shapes.update({
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
        })
    return shapes


def quantized_weights(size: str) -> int:
    """Weights lower-datatype quantizes: every linear of the decoder layers (embeddings and the
    LM head stay fp16 by default): the work the quantizer's cost is proportional to."""
    return sum(torch.Size(s).numel() for n, s in tensor_shapes(llama_config(size)).items()
               if ".layers." in n and len(s) == 2)


def write_checkpoint(size: str, directory: Path) -> tuple[int, int]:
    """Write config.json and fp16 safetensors shards; returns (parameters, bytes)."""
    from qcompiler.artifact import save_safetensors

    config = llama_config(size)
    shapes = tensor_shapes(config)
    params = sum(torch.Size(s).numel() for s in shapes.values())
    marker = directory / ".complete"
    if marker.is_file():
        return params, sum(p.stat().st_size for p in directory.glob("*.safetensors"))
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    config.save_pretrained(directory)
    shards: list[dict[str, tuple[int, ...]]] = [{}]
    used = 0
    for name, shape in shapes.items():
        nbytes = torch.Size(shape).numel() * 2
        if used + nbytes > SHARD_BYTES and shards[-1]:
            shards.append({})
            used = 0
        shards[-1][name] = shape
        used += nbytes

    def make(name: str) -> torch.Tensor:
        shape = shapes[name]
        if len(shape) == 1:
            return torch.ones(shape, dtype=torch.float16)
        g = torch.Generator().manual_seed(sum(map(ord, name)))
        return (torch.randn(shape, generator=g) * 0.02).to(torch.float16)

    weight_map = {}
    for index, shard in enumerate(shards):
        file = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
        stand_ins = {n: torch.zeros((), dtype=torch.float16).expand(s) for n, s in shard.items()}
        save_safetensors(directory / file, stand_ins, make, metadata={"format": "pt"})
        weight_map.update({n: file for n in shard})
    index_file = {"metadata": {"total_size": params * 2}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index_file, indent=2))
    marker.touch()
    return params, sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def pipeline_for(fmt: str, search: str | None) -> str | None:
    """The compile pipeline: the format's default one, or with lower-datatype's `search`."""
    if search is None:
        return None
    return f"canonicalize,dce,lower-datatype{{format={fmt},search={search}}},dce"


def compile_under_time(model_dir: Path, out: Path, fmt: str,
                       search: str | None = None) -> dict[str, float]:
    """Compile in a fresh process under /usr/bin/time -v; wall seconds and peak RSS (MiB)."""
    how = ("format=%r" % fmt if search is None
           else "pipeline=%r" % pipeline_for(fmt, search))
    code = ("import qcompiler; qcompiler.compile(%r, %s, out=%r, force=True, quiet=True, "
            "stream=True)" % (str(model_dir), how, str(out)))
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", code]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"compile of {model_dir} failed:\n{proc.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", proc.stderr).group(1))
              for kind in ("User", "System"))
    build = json.loads((out / "build.json").read_text())
    passes = dict((p, s) for p, s in build["pass_seconds"])
    lower = next((s for p, s in passes.items() if p.startswith("lower-datatype")), 0.0)
    return {"seconds": wall, "cpu_seconds": cpu, "peak_rss_mib": rss_kb / 1024,
            "lower_seconds": lower, "build_peak_rss_mib": build["peak_rss_mb"],
            "artifact_mib": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="0.1B,0.5B,1B", help="comma-separated: 0.1B,0.5B,1B")
    p.add_argument("--format", default="razer4")
    p.add_argument("--search", choices=["clip", "rtn"],
                   help="lower-datatype's scale search (default: the format's own); rtn "
                        "measures the memory of the streaming path in a fraction of the time")
    p.add_argument("--work-dir", default="/tmp/qc-bench", help="checkpoints and artifacts")
    p.add_argument("--keep", action="store_true", help="keep the checkpoints for a re-run")
    p.add_argument("--results", default=str(RESULTS), help="markdown file to write")
    p.add_argument("--render-only", action="store_true",
                   help="rewrite the markdown from the recorded rows, measure nothing")
    args = p.parse_args(argv)
    if args.render_only:
        results = Path(args.results)
        rows = record(results.with_suffix(".json"), [], args.format)
        results.write_text(render(rows, args.format))
        return 0
    work = Path(args.work_dir)
    command = ("python bench/compile_scaling.py "
               + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    rows = []
    for size in args.sizes.split(","):
        model_dir = work / f"llama-{size}"
        params, nbytes = write_checkpoint(size, model_dir)
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        load_before = os.getloadavg()[0]
        result = compile_under_time(model_dir, work / f"out-{size}-{args.format}", args.format,
                                    args.search)
        budget = 1024 + 0.25 * nbytes / 2**20
        rows.append({"size": size, "format": args.format, "search": args.search or "default",
                     "params": params,
                     "ckpt_mib": nbytes / 2**20, "budget_mib": budget, **result,
                     "date": started, "command": command, "machine": machine(),
                     "load_before": load_before, "load_after": os.getloadavg()[0],
                     "versions": _versions()})
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(work / f"out-{size}-{args.format}", ignore_errors=True)
        if not args.keep:
            shutil.rmtree(model_dir, ignore_errors=True)
        results = Path(args.results)  # after each size: a long run stopped later keeps it
        results.write_text(render(record(results.with_suffix(".json"), rows[-1:], args.format),
                                  args.format))
    return 0 if all(r["peak_rss_mib"] <= r["budget_mib"] for r in rows) else 1


def record(path: Path, rows: list[dict], fmt: str) -> list[dict]:
    """Merge this run's rows into the JSON record (same size, format, search: replaced); returns the
    recorded rows of `fmt`. Re-read just before writing, so that concurrent runs of other sizes
    keep theirs."""
    previous = json.loads(path.read_text()) if path.is_file() else []
    def key(r: dict) -> tuple[str, str, str]:
        return r["size"], r["format"], r.get("search", "default")

    fresh = {key(r) for r in rows}
    merged = [r for r in previous if key(r) not in fresh] + rows
    merged.sort(key=lambda r: (r["format"], r.get("search", "default"), r["params"]))
    path.write_text(json.dumps(merged, indent=1) + "\n")
    return [r for r in merged if r["format"] == fmt]


def machine() -> str:
    """CPU model, core count, memory and load: what the timings depend on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
        mem_text = f", {int(mem) / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        mem_text = ""
    return f"{cpu}, {os.cpu_count()} CPU threads{mem_text} ({platform.system()} " \
           f"{platform.release()})"


def _versions() -> str:
    from qcompiler.artifact import versions

    return ", ".join([f"Python {platform.python_version()}"]
                     + [f"{k} {v}" for k, v in versions().items()])


def scaling_summary(rows: list[dict]) -> list[str]:
    """Per search mode: how peak RSS and CPU time grow between the smallest and largest size
    measured (per 1M quantized weights), so "linear" is checked from the numbers, not by eye."""
    out = []
    for search in sorted({r["search"] for r in rows}):
        group = sorted((r for r in rows if r["search"] == search), key=lambda r: r["params"])
        over = [r["size"] for r in group if r["peak_rss_mib"] > r["budget_mib"]]
        verdict = f"over budget: {', '.join(over)}" if over else "all within budget"
        if len(group) < 2:
            out.append(f"- {search} search: measured at {group[0]['size']} only; {verdict}.")
            continue
        a, b = group[0], group[-1]
        wa, wb = quantized_weights(a["size"]) / 1e6, quantized_weights(b["size"]) / 1e6
        rss = (b["peak_rss_mib"] - a["peak_rss_mib"]) / (wb - wa)
        cpu = (b["cpu_seconds"] - a["cpu_seconds"]) / (wb - wa)
        out.append(
            f"- {search} search, {a['size']} → {b['size']} ({wb / wa:.1f}× the quantized "
            f"weights): peak RSS +{rss:.2f} MiB and CPU +{cpu:.2f} s per 1M more weights "
            f"(RSS {b['peak_rss_mib'] / a['peak_rss_mib']:.2f}×, CPU "
            f"{b['cpu_seconds'] / a['cpu_seconds']:.1f}×); {verdict}.")
    by_key = {(r["size"], r["search"]): r for r in rows}
    for size in SIZES:
        d, r = by_key.get((size, "default")), by_key.get((size, "rtn"))
        if d and r:
            out.append(f"- default vs rtn search at {size}: peak RSS "
                       f"{d['peak_rss_mib'] - r['peak_rss_mib']:+.0f} MiB, CPU "
                       f"{d['cpu_seconds'] / r['cpu_seconds']:.1f}× (the search's own cost).")
    return out


def render(rows: list[dict], fmt: str) -> str:
    lines = [
        "# Compile scaling: streaming compilation of Llama checkpoints",
        "",
        "Random-weight Llama checkpoints (fp16 safetensors, vocab 32000, untied LM head) compiled "
        f"to `{fmt}` (default group size, default pipeline) in a fresh process with streaming "
        "capture, measured with `/usr/bin/time -v` (wall time, user+system CPU time, maximum "
        "resident set size).",
        "",
        "Budget (from the issue): peak RSS < 1 GiB + 25 % of the fp16 checkpoint size.",
        "",
        "Runs (command, date, machine, versions; load = 1-minute load average before/after):",
        "",
    ]
    for r in rows:
        lines.append(f"- llama-{r['size']} ({r['search']} search): `{r['command']}`, "
                     f"{r['date']}; {r['machine']}; "
                     f"load {r['load_before']:.1f}/{r['load_after']:.1f}; {r['versions']}.")
    lines += [
        "",
        "| model | search | parameters | checkpoint (MiB) | compile wall (s) | CPU (s) "
        "| of which lower-datatype (s) | peak RSS (MiB) | budget (MiB) | artifact (MiB) "
        "| CPU s per 1M quantized weights | budget |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        r["verdict"] = "within" if r["peak_rss_mib"] <= r["budget_mib"] else "OVER"
        lines.append(
            f"| llama-{r['size']} | {r['search']} | {r['params'] / 1e6:.0f}M | "
            f"{r['ckpt_mib']:.0f} | "
            f"{r['seconds']:.0f} | {r['cpu_seconds']:.0f} | {r['lower_seconds']:.0f} | "
            f"{r['peak_rss_mib']:.0f} | {r['budget_mib']:.0f} | {r['artifact_mib']:.0f} | "
            f"{r['cpu_seconds'] / (quantized_weights(r['size']) / 1e6):.2f} | {r['verdict']} |")
    lines += ["", *scaling_summary(rows)]
    lines += [
        "",
        "How the memory stays bounded: the model is captured with parameters on the meta device "
        "(zero-stride stand-ins for export), `lower-datatype` reads one weight at a time from the "
        "shards (quantized in row blocks of about 1M elements, so the scale search's "
        "temporaries stay bounded) and keeps only the packed "
        "result, and the artifact writer streams the remaining fp tensors (embeddings, LM head, "
        "norms) from the shards in 16 MiB row blocks. What stays resident: the Python/torch/"
        "transformers/torch.export baseline (about 500 MiB) plus the packed weights (about "
        "0.52 byte per weight for razer4 g128), so peak RSS grows with the quantized size, not "
        "with the fp16 checkpoint.",
        "",
        "Compile time is dominated by `lower-datatype`, i.e. the format's reference quantizer "
        "(razer4's clip search tries every special value at ~10 clip ratios per group); its cost "
        "is proportional to the number of quantized weights, so CPU seconds per 1M quantized "
        "weights should be flat across sizes (the smallest model also pays the fixed cost of "
        "importing torch and exporting the graph). Wall times on a shared machine include "
        "waiting for the CPU; compare "
        "the CPU column.",
        "",
        "Search column: `default` is the format's own scale search (for razer4 the clip "
        "search), i.e. the pipeline of `qcompile MODEL --format razer4`; `rtn` runs the same "
        "streaming "
        "path with `lower-datatype{search=rtn}` (round to nearest after the per-group special-"
        "value choice), several times cheaper. The search only changes the CPU time and the "
        "size of the per-block temporaries (bounded by the block size, not by the model), so "
        "rtn rows measure how memory scales with model size when a machine is too busy to run "
        "the clip search on 1B parameters in time; compare the two at the same size for the "
        "search's own memory.",
        "",
        f"Noise: {NOISE_NOTE}",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

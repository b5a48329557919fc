"""Compile time and peak memory of streaming compilation, for Llama checkpoints of 0.1B-1B.

    python bench/compile_scaling.py                       # 0.1B, 0.5B, 1B; writes the results
    python bench/compile_scaling.py --sizes 0.1B --format int4 --work-dir /tmp/qc-bench

For each size it writes a random-weight Llama checkpoint (fp16 safetensors, two shards above
1 GB, tensor by tensor so the bench itself stays small), then compiles it in a fresh process
under `/usr/bin/time -v` and records wall time and maximum resident set size. The budget the
issue sets: peak RSS under 1 GiB + 25 % of the fp16 checkpoint size.

Results go to bench/results/compile_scaling.md (a table plus the machine it ran on).
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


def compile_under_time(model_dir: Path, out: Path, fmt: str) -> dict[str, float]:
    """Compile in a fresh process under /usr/bin/time -v; wall seconds and peak RSS (MiB)."""
    code = ("import qcompiler; qcompiler.compile(%r, format=%r, out=%r, force=True, quiet=True, "
            "stream=True)" % (str(model_dir), fmt, str(out)))
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", code]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"compile of {model_dir} failed:\n{proc.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", proc.stderr).group(1))
              for kind in ("User", "System"))
    manifest = json.loads((out / "manifest.json").read_text())
    passes = dict((p, s) for p, s in manifest["build"]["pass_seconds"])
    lower = next((s for p, s in passes.items() if p.startswith("lower-datatype")), 0.0)
    return {"seconds": wall, "cpu_seconds": cpu, "peak_rss_mib": rss_kb / 1024,
            "lower_seconds": lower,
            "artifact_mib": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="0.1B,0.5B,1B", help="comma-separated: 0.1B,0.5B,1B")
    p.add_argument("--format", default="razer4")
    p.add_argument("--work-dir", default="/tmp/qc-bench", help="checkpoints and artifacts")
    p.add_argument("--keep", action="store_true", help="keep the checkpoints for a re-run")
    p.add_argument("--results", default=str(RESULTS), help="markdown file to write")
    args = p.parse_args(argv)
    work = Path(args.work_dir)
    rows = []
    for size in args.sizes.split(","):
        model_dir = work / f"llama-{size}"
        params, nbytes = write_checkpoint(size, model_dir)
        result = compile_under_time(model_dir, work / f"out-{size}-{args.format}", args.format)
        budget = 1024 + 0.25 * nbytes / 2**20
        rows.append({"size": size, "params": params, "ckpt_mib": nbytes / 2**20,
                     "budget_mib": budget, **result})
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(work / f"out-{size}-{args.format}", ignore_errors=True)
        if not args.keep:
            shutil.rmtree(model_dir, ignore_errors=True)
    Path(args.results).write_text(render(rows, args.format))
    return 0 if all(r["peak_rss_mib"] <= r["budget_mib"] for r in rows) else 1


def render(rows: list[dict], fmt: str) -> str:
    lines = [
        "# Compile scaling: streaming compilation of Llama checkpoints",
        "",
        f"`python bench/compile_scaling.py` — random-weight Llama checkpoints (fp16 safetensors, "
        f"vocab 32000, untied LM head) compiled to `{fmt}` (default group size, default pipeline) "
        "in a fresh process with streaming capture, measured with `/usr/bin/time -v`.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__}.",
        "Budget (from the issue): peak RSS < 1 GiB + 25 % of the fp16 checkpoint.",
        "",
        "| model | parameters | checkpoint (MiB) | compile wall (s) | CPU (s) "
        "| of which lower-datatype (s) | peak RSS (MiB) | budget (MiB) | artifact (MiB) "
        "| CPU s per 1M params |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: r["params"]):
        lines.append(
            f"| llama-{r['size']} | {r['params'] / 1e6:.0f}M | {r['ckpt_mib']:.0f} | "
            f"{r['seconds']:.0f} | {r['cpu_seconds']:.0f} | {r['lower_seconds']:.0f} | "
            f"{r['peak_rss_mib']:.0f} | {r['budget_mib']:.0f} | {r['artifact_mib']:.0f} | "
            f"{r['cpu_seconds'] / (r['params'] / 1e6):.2f} |")
    lines += [
        "",
        "How the memory stays bounded: the model is captured with parameters on the meta device "
        "(zero-stride stand-ins for export), `lower-datatype` reads one weight at a time from the "
        "shards (row blocks of 4M elements for the scale search) and keeps only the packed "
        "result, and the artifact writer streams the remaining fp tensors (embeddings, LM head, "
        "norms) from the shards in 16 MiB row blocks. What stays resident: the Python/torch/"
        "transformers/torch.export baseline (about 500 MiB) plus the packed weights (about "
        "0.52 byte per weight for razer4 g128), so peak RSS grows with the quantized size, not "
        "with the fp16 checkpoint.",
        "",
        "Compile time is dominated by `lower-datatype`, i.e. the format's reference quantizer "
        "(razer4's clip search tries every special value at ~10 clip ratios per group); its cost "
        "is proportional to the number of weights, so CPU seconds per parameter should be flat "
        "across sizes. Wall times on a shared machine include waiting for the CPU; compare "
        "the CPU column.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

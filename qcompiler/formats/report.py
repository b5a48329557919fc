"""Format comparison report: relative weight error of every weight format, vs bits per weight.

    python -m qcompiler.formats.report --out bench/results/formats.md \
        --plot bench/results/formats.png
    qcompile formats --report --out ... (the same)

Why: the formats are chosen by how much error they cost per stored bit, on real weights and on
the heavy-tailed shapes LLM weights have, and by whether quantizing a model is fast enough to do
in a compile step. The table answers both: relative error sum((w_hat - w)^2) / sum(w^2) over all
2-D linear weights of the real MiniLM-L6 checkpoint and over seeded Gaussian and Student-t(4)
matrices, with each format's default scale search, the storage bits per weight, and the wall
and CPU time to quantize all MiniLM linears (one process). The markdown starts with the command
that made it and the machine, so a number can be traced to how it was produced.

A format entry may carry format options after slashes, `fp4/scale=pow2` (ZeroQuant-FP's
power-of-two group scales), to measure what an option costs beside the plain format.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qcompiler import formats
from qcompiler.errors import QCompilerError, UsageError

DEFAULT_GROUP_SIZES = (32, 64, 128)
SYNTHETIC_SHAPE = (1024, 1024)
SYNTHETIC_SEED = 0
# FORMATS.md's acceptance checks: (better, worse) at group size 128 on MiniLM
CLAIMS = (("razer4", "fp4"), ("razer4", "int4"), ("nvfp4-razer", "nvfp4"))


@dataclass
class Row:
    """One (format, group size): errors per data set, bits per weight, MiniLM quantize time."""

    format: str  # the entry as given: a format name, or NAME/KEY=VALUE with format options
    group_size: int
    bits_per_weight: float
    errors: dict[str, float] = field(default_factory=dict)
    wall_s: float | None = None
    cpu_s: float | None = None


def minilm_linears() -> list[torch.Tensor]:
    """The 2-D linear weights of the real MiniLM-L6 checkpoint (embedding tables excluded)."""
    from safetensors.torch import load_file

    from qcompiler import zoo

    tensors = load_file(str(zoo.minilm_dir() / "model.safetensors"))
    return [t.to(torch.float32) for name, t in sorted(tensors.items())
            if t.dim() == 2 and name.endswith(".weight") and "embeddings" not in name]


def synthetic(kind: str, shape: tuple[int, int] = SYNTHETIC_SHAPE,
              seed: int = SYNTHETIC_SEED) -> list[torch.Tensor]:
    """Seeded Gaussian or Student-t (4 degrees of freedom: LLM-like heavy tails) weights."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=gen)
    if kind == "gaussian":
        return [z * 0.02]
    if kind == "student-t":
        chi2 = torch.randn((4, *shape), generator=gen).square().sum(0)
        return [z / (chi2 / 4).sqrt() * 0.02]
    raise ValueError(f"unknown synthetic kind {kind!r}")


def parse_entry(entry: str) -> tuple[formats.Format, dict[str, str]]:
    """`fp4` or `fp4/scale=pow2`: the format and its options (checked by the format)."""
    name, *settings = entry.split("/")
    fmt = formats.get(name)
    opts = {}
    for item in settings:
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"--formats: '{entry}': options are written NAME/KEY=VALUE, "
                             "e.g. fp4/scale=pow2")
        opts[key] = value
    fmt._check_options(opts)  # an unknown key or value: the format's one-line error
    return fmt, opts


def relative_error(fmt: formats.Format, weights: list[torch.Tensor], g: int,
                   opts: dict[str, str] | None = None) -> float:
    num = den = 0.0
    for w in weights:
        w_hat = fmt.dequantize(fmt.quantize(w, group_size=g, **(opts or {})))
        num += float((w_hat - w).double().square().sum())
        den += float(w.double().square().sum())
    return num / den


def timed_quantize(fmt: formats.Format, weights: list[torch.Tensor], g: int,
                   opts: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds to quantize every tensor of `weights` once."""
    wall, cpu = time.perf_counter(), time.process_time()
    for w in weights:
        fmt.quantize(w, group_size=g, **(opts or {}))
    return time.perf_counter() - wall, time.process_time() - cpu


def group_sizes_for(fmt: formats.Format, wanted: tuple[int, ...]) -> list[int]:
    """The wanted sizes the format allows; a fixed-block format (NVFP4, MXFP4) its own block."""
    sizes = [g for g in wanted if g in fmt.group_sizes]
    return sizes or ([fmt.group_sizes[0]] if len(fmt.group_sizes) == 1 else [])


def measure(names: list[str], wanted: tuple[int, ...],
            datasets: dict[str, list[torch.Tensor]], timed: str | None) -> list[Row]:
    rows = []
    for name in names:
        fmt, opts = parse_entry(name)
        for g in group_sizes_for(fmt, wanted):
            row = Row(name, g, fmt.bits_per_weight(g))
            for label, weights in datasets.items():
                row.errors[label] = relative_error(fmt, weights, g, opts)
            if timed is not None:
                row.wall_s, row.cpu_s = timed_quantize(fmt, datasets[timed], g, opts)
            rows.append(row)
            if sys.stderr.isatty():
                sys.stderr.write(f"  {name:<12} g{g:<4} " + "  ".join(
                    f"{k} {v:.3e}" for k, v in row.errors.items()) + "\n")
    return rows


def claims(rows: list[Row], dataset: str, g: int = 128) -> list[tuple[str, bool]]:
    """FORMATS.md's orderings that the rows can check: (line, holds)."""
    at = {r.format: r.errors[dataset] for r in rows if dataset in r.errors
          and (r.group_size == g or len(parse_entry(r.format)[0].group_sizes) == 1)}
    out = []
    for better, worse in CLAIMS:
        if better in at and worse in at:
            holds = at[better] < at[worse]
            out.append((f"{better} ({at[better]:.5f}) < {worse} ({at[worse]:.5f})", holds))
    return out


def render(rows: list[Row], command: str, datasets: dict[str, list[torch.Tensor]],
           timed: str | None) -> str:
    labels = list(datasets)
    lines = [
        "# Weight formats: relative error vs bits per weight",
        "",
        f"Command: `{command}`",
        "",
        f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}  ",
        f"Machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs "
        f"(load average {', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end)  ",
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
        f"Python {platform.python_version()}",
        "",
        "Relative error = sum((w_hat - w)^2) / sum(w^2) over all tensors of the data set, with "
        "each format's default scale search. " + "; ".join(
            f"{k}: {len(v)} tensors, {sum(t.numel() for t in v):,} weights"
            for k, v in datasets.items()) + ".",
        "Bits per weight include per-group scales, zero points and metadata (NVFP4's per-tensor "
        "fp32 scale is not counted). NVFP4 and MXFP4 have fixed blocks (16, 32): one row each.",
    ]
    if timed is not None:
        lines.append(f"Time: quantizing every {timed} tensor once (wall and CPU seconds of this "
                     "process; on a shared machine the wall time includes waiting for a core).")
    head = ["format", "group", "bits/weight", *(f"{k} rel. error" for k in labels)]
    if timed is not None:
        head += ["time (s)", "CPU (s)"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.format, str(r.group_size), f"{r.bits_per_weight:.4f}",
                 *(f"{r.errors[k]:.4e}" for k in labels)]
        if timed is not None:
            cells += [f"{r.wall_s:.2f}", f"{r.cpu_s:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    checks = claims(rows, labels[0]) if labels else []
    if checks:
        lines += ["", f"Orderings FORMATS.md asks for ({labels[0]}, group 128; NVFP4 blocks "
                  "of 16):", ""]
        lines += [f"- {text}: {'holds' if ok else 'DOES NOT HOLD'}" for text, ok in checks]
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], dataset: str, path: Path) -> None:
    """Error vs bits per weight, one line per format through its group sizes; the right panel
    zooms on the crowded 4-bit region."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1, 1.2]})
    colors = plt.get_cmap("tab20").colors
    markers = "osD^vPX*<>ph"
    names = list(dict.fromkeys(r.format for r in rows))
    for i, name in enumerate(names):
        pts = sorted((r.bits_per_weight, r.errors[dataset]) for r in rows if r.format == name)
        style = dict(marker=markers[i % len(markers)], color=colors[(2 * i) % 20 + (i // 10)],
                     label=name)
        for ax in axes:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], **style)
    zoom = [r for r in rows if 4.0 <= r.bits_per_weight <= 4.8]
    if zoom:
        errs = [r.errors[dataset] for r in zoom]
        axes[1].set_xlim(4.05, 4.8)
        axes[1].set_ylim(min(errs) * 0.85, min(max(errs), 4 * min(errs)) * 1.15)
        axes[1].set_title("4-bit formats (zoom)")
    axes[0].set_title("all weight formats")
    for ax in axes:
        ax.set_xlabel("bits per weight (codes + scales + metadata)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"relative weight error on {dataset} (log)")
    axes[1].legend(fontsize=8, ncol=2, loc="upper right")
    fig.suptitle("Relative weight error vs storage; each line runs through group sizes "
                 "(more bits = smaller groups)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_list(text: str, kind: type, what: str) -> tuple:
    try:
        return tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--{what}: expected a comma-separated list, got '{text}'") from None


def main(argv: list[str] | None = None, prog: str = "python -m qcompiler.formats.report") -> int:
    from qcompiler.cli import common

    p = common.ArgumentParser(prog=prog, description="Compare weight formats: relative error "
                              "on MiniLM and synthetic weights vs bits per weight.")
    p.add_argument("--out", type=Path, help="write the markdown table here (default: stdout)")
    p.add_argument("--plot", type=Path, help="write a PNG of error vs bits per weight here")
    p.add_argument("--formats", help="comma-separated formats (default: every weight format), "
                   "each optionally with format options: fp4/scale=pow2")
    p.add_argument("--group-sizes", default="32,64,128", help="default 32,64,128")
    p.add_argument("--no-minilm", action="store_true",
                   help="synthetic weights only (no checkpoint needed; no timing column)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: on a shared machine OpenMP barriers "
                        "between the many small ops of a scale search cost more than they gain)")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    command = shlex.join([*prog.split(), *argv])
    return common.run_main(lambda: run(args, command))


def run(args: argparse.Namespace, command: str) -> int:
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    names = (list(parse_list(args.formats, str, "formats")) if args.formats else
             [n for n in formats.names() if formats.get(n).role != "activation"])
    for n in names:
        try:
            parse_entry(n)
        except QCompilerError as e:  # a bad flag value: usage error, listing the known names
            raise UsageError(f"--formats: {e}") from None
    wanted = parse_list(args.group_sizes, int, "group-sizes")
    datasets: dict[str, list[torch.Tensor]] = {}
    if not args.no_minilm:
        datasets["MiniLM"] = minilm_linears()
    datasets["Gaussian"] = synthetic("gaussian")
    datasets["Student-t(4)"] = synthetic("student-t")
    timed = None if args.no_minilm else "MiniLM"
    rows = measure(names, wanted, datasets, timed)
    if not rows:
        raise UsageError(f"no format allows the group sizes {args.group_sizes}")
    text = render(rows, command, datasets, timed)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.plot is not None:
        plot(rows, next(iter(datasets)), args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What GPTQ's options cost: CPU-seconds of `gptq_quantize` on one layer, per variant.

    python bench/gptq_cost.py                       # 4096 x 4096, razer4 g64 -> results
    python bench/gptq_cost.py --rows 1024 --format int4 --out -

Why: the gptq pass's defaults (act-order, output-error group scales) buy accuracy
(bench/results/accuracy-smollm2.md); this says what they cost in time against the previous
default (no act-order, weight-error scales), on one layer whose input channels differ in scale
as an LLM's do. Time is process CPU time with one torch thread, best of `--repeats`; each row
also gives the layer's relative output error ||X(W - Ŵ)ᵀ||² / ||XWᵀ||² on the calibration
inputs, so cost and gain sit side by side.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qcompiler import formats  # noqa: E402
from qcompiler.gptq_core import gptq_quantize  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "gptq_cost.md"
# name -> (act_order, search); the first is the default before 2026-12-03
VARIANTS = {"previous default": (False, "clip"), "act-order": (True, "clip"),
            "output-mse": (False, "output-mse"), "default (both)": (True, "output-mse")}


def layer(rows: int, k: int, tokens: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight [rows, k] (std 0.02) and inputs [tokens, k] with log-normal channel scales."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, k, generator=g) * torch.exp(torch.randn(k, generator=g) * 0.8)
    return torch.randn(rows, k, generator=g) * 0.02, x


def measure(fmt_name: str, group: int, w: torch.Tensor, x: torch.Tensor, repeats: int) -> list:
    fmt = formats.get(fmt_name)
    h = x.T @ x
    ref = (x @ w.T).square().sum()
    out = []
    for name, (act_order, search) in VARIANTS.items():
        best = float("inf")
        for _ in range(repeats):
            start = time.process_time()
            q = gptq_quantize(fmt, w, h, group, act_order=act_order, search=search)
            best = min(best, time.process_time() - start)
        err = float((x @ (fmt.dequantize(q) - w).T).square().sum() / ref)
        out.append((name, act_order, search, best, err))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--format", default="razer4")
    p.add_argument("--group", type=int, default=64)
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--k", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=8192,
                   help="calibration rows behind H (more than K: H of full rank)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS), help="results file, or - for stdout")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    w, x = layer(args.rows, args.k, args.tokens)
    rows = measure(args.format, args.group, w, x, args.repeats)
    base = rows[0][3]
    command = "python bench/gptq_cost.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = ["# GPTQ's cost per variant", "",
             f"Command: `{command.strip()}`  ",
             f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}  ",
             f"Machine: {platform.platform()}, 1 torch thread, Python "
             f"{platform.python_version()}, torch {torch.__version__}", "",
             __doc__.split("\n\n", 2)[2].strip(), "",
             f"Layer: {args.format} g{args.group}, W {args.rows} x {args.k}, H from "
             f"{args.tokens} input rows.", "",
             "| variant | act-order | search | CPU-s | vs previous default | output error |",
             "|---|---|---|---|---|---|"]
    for name, act_order, search, sec, err in rows:
        lines.append(f"| {name} | {str(act_order).lower()} | {search} | {sec:.2f} | "
                     f"{sec / base:.2f}x | {err:.5f} |")
    text = "\n".join(lines) + "\n"
    if args.out == "-":
        print(text, end="")
    else:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

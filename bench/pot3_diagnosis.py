"""Why pot3 RTN collapses SmolLM2-135M (perplexity in the hundreds of thousands) while int3 does not.

    python bench/pot3_diagnosis.py        # -> bench/results/pot3_diagnosis.md

Every variant replaces the weights of the 210 decoder linears (embedding and LM head stay fp)
by `formats.get(fmt).dequantize(formats.get(fmt).quantize(w, 64, search="rtn"))`: the format's
own quantizer, no compiler pipeline, so a difference here is the format, not a pass. Variants
that change one thing at a time:

- pot3 + zero code: pot3, except weights below max/16 of their group (the half-way point under
  pot3's smallest level, max/8) become exact zeros: what a zero code would add.
- keep top-1% input channels: the columns that read the 1% of input channels with the largest
  RMS (over a calibration window) stay fp: do the errors there matter most?
- pot3 on v_proj only / on everything else: is one kind of layer enough?

Per linear, with H = the input's second moment over a calibration window (qcompiler.calibration),
the table also gives the mean weight error ||Ŵ - W|| / ||W||, the output error
tr((Ŵ-W) H (Ŵ-W)ᵀ) / tr(W H Wᵀ) and the output gain sqrt(tr(Ŵ H Ŵᵀ) / tr(W H Wᵀ)). Model:
SmolLM2-135M-Instruct with linear weights from llama.cpp Q4_1 (`zoo:smollm2-135m`).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "wikitext2" / "wiki.test.raw"
OUT = ROOT / "bench" / "results" / "pot3_diagnosis.md"
GROUP = 64


def rtn(fmt: str, w: torch.Tensor) -> torch.Tensor:
    from qcompiler import formats

    f = formats.get(fmt)
    return f.dequantize(f.quantize(w.float(), GROUP, search="rtn"))


def pot3_with_zero(w: torch.Tensor) -> torch.Tensor:
    """pot3, and the weights a zero code would take (below max/16 of the group) set to 0."""
    g = w.reshape(w.shape[0], -1, GROUP)
    small = g.abs() < g.abs().amax(-1, keepdim=True) / 16
    return torch.where(small, 0.0, rtn("pot3", w).reshape(g.shape)).reshape(w.shape)


def main(argv: list[str] | None = None) -> int:
    from qcompiler import zoo
    from qcompiler.calibration import collect_linear_stats, program_tokenizer
    from qcompiler.text_data import describe, evaluation_windows

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--windows", type=int, default=2)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    start = time.time()
    model = zoo.load("smollm2-135m")
    cut = evaluation_windows(TEXT.read_text(encoding="utf-8"), program_tokenizer(model),
                             window=args.window, count=args.windows)
    stats = collect_linear_stats(model, cut.windows[:1], hessian=True, absmax=False)
    params = dict(model.gm.named_parameters())
    names = [n.removesuffix(".weight") for n, t in params.items()
             if t.dim() == 2 and n.removesuffix(".weight") in stats and "lm_head" not in n]
    fp = {n: params[n + ".weight"].detach().clone() for n in names}
    hess = {n: stats[n].hessian / stats[n].tokens for n in names}

    def keep_top(fmt):
        def f(w, n):
            top = hess[n].diagonal().topk(max(1, w.shape[1] // 100)).indices
            q = rtn(fmt, w)
            q[:, top] = w[:, top]
            return q
        return f

    variants = [("fp", None, None), ("int3", lambda w, n: rtn("int3", w), None),
                ("pot3", lambda w, n: rtn("pot3", w), None),
                ("pot3 + zero code", lambda w, n: pot3_with_zero(w), None),
                ("int3, keep top-1% input channels fp", keep_top("int3"), None),
                ("pot3, keep top-1% input channels fp", keep_top("pot3"), None),
                ("pot3 on v_proj only", lambda w, n: rtn("pot3", w), "v_proj"),
                ("pot3 on all but v_proj", lambda w, n: rtn("pot3", w), "!v_proj")]
    rows = []
    for label, fn, only in variants:
        errs = []
        for n in names:
            chosen = fn is not None and (only is None or (only.startswith("!") != (only.strip("!") in n)))
            q = fn(fp[n], n) if chosen else fp[n]
            params[n + ".weight"].data.copy_(q)
            if chosen:
                e, h, w = q - fp[n], hess[n], fp[n]
                ref = float(((w @ h) * w).sum())
                errs.append((float(e.norm() / w.norm()), float(((e @ h) * e).sum()) / ref,
                             (float(((q @ h) * q).sum()) / ref) ** 0.5))
        ppl = perplexity(model, cut.windows)
        mean = [sum(c) / len(c) for c in zip(*errs)] if errs else [0.0, 0.0, 1.0]
        gains = sorted(g for _, _, g in errs) if errs else [1.0]
        rows.append((label, ppl, *mean, gains[-1]))
        print(f"{label}: ppl {ppl:.2f}", file=sys.stderr, flush=True)
    Path(args.out).write_text(render(rows, describe(cut), argv, time.time() - start))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def perplexity(model, windows) -> float:
    nll = []
    with torch.no_grad():
        for w in windows:
            q = torch.log_softmax(model(w)[0].float(), -1)
            nll.append(-q[:-1].gather(-1, w[0, 1:, None])[:, 0].double())
    return float(torch.cat(nll).mean().exp())


def render(rows, evaluation: str, argv, seconds: float) -> str:
    import transformers

    lines = ["# pot3 RTN on SmolLM2-135M: what makes it collapse", "",
             f"Command: `python bench/pot3_diagnosis.py {' '.join(argv or sys.argv[1:])}`  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {seconds:.0f} s  ",
             f"Machine: {platform.platform()}, {torch.get_num_threads()} threads (shared), "
             f"Python {platform.python_version()}, torch {torch.__version__}, transformers "
             f"{transformers.__version__}  ",
             "Model: SmolLM2-135M-Instruct, linear weights from llama.cpp Q4_1 (blocks of 32) "
             "dequantized to fp32 (`zoo:smollm2-135m`).  ",
             f"Evaluation: wiki.test.raw, {evaluation}; H from the first window. Weights g64 "
             "RTN through each format's own quantize/dequantize (no pipeline); embedding and LM "
             "head fp.", "",
             "| variant | perplexity | weight error (mean) | output error (mean) | "
             "output gain (mean) | output gain (max) |", "|---|---|---|---|---|---|"]
    lines += [f"| {lab} | {ppl:.2f} | {we:.4f} | {oe:.4f} | {g:.4f} | {gmax:.4f} |"
              for lab, ppl, we, oe, g, gmax in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

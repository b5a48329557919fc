"""The SmolLM2 results file: the table, what is missing and why, and the papers' claims.

Rendered from the saved rows alone (bench/results/accuracy-smollm2.json), so `--render` after a
stopped run says exactly what was measured. A claim compares two rows' mean perplexity; the gap
counts only when it is larger than the calibration spread (max - min over seeds) of either
row, else it is a tie. Rows with one calibration seed have no spread: the verdict says so.
"""

from __future__ import annotations

import os
import platform

import smollm2_plan as plan

Q41 = ("SmolLM2-135M-Instruct whose linear weights come from llama.cpp Q4_1 (blocks of 32), "
       "dequantized to fp32")
SPEC = {"eval_tokens": 32000, "calib_samples": 128, "calib_seqlen": 512, "seeds": 3}


def mean(row: dict, key: str) -> float | None:
    vals = [r[key] for r in row.get("runs", []) if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def spread(row: dict, key: str = "perplexity") -> float | None:
    vals = [r[key] for r in row.get("runs", [])]
    return max(vals) - min(vals) if len(vals) > 1 else None


def label(row: dict) -> str:
    parts = [row["method"]]
    if row.get("act"):
        parts.append(f"A8 {row['act']}")
    if row.get("kv"):
        parts.append(f"KV {row['kv']}")
    return ", ".join(parts)


def table(rows: list[dict], seeds: int) -> list[str]:
    lines = [f"| format | group | bits/weight | method | perplexity ({plan_note()}) | "
             "ppl spread | KL mean | KL p99 | top-1 | seeds | s/run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r.get("runs"):
            continue
        sp = spread(r)
        seeds_txt = (f"{len(r['runs'])}/{seeds}" if r["calibrated"] else "(no calibration)")
        lines.append(
            f"| {r['format']} | {r['group'] or ''} | {r['bpw']:.3f} | {label(r)} | "
            f"{mean(r, 'perplexity'):.3f} | {'' if sp is None else f'{sp:.3f}'} | "
            f"{mean(r, 'kl_mean'):.4f} | {mean(r, 'kl_p99'):.3f} | {mean(r, 'top1'):.4f} | "
            f"{seeds_txt} | {mean(r, 'seconds'):.0f} |")
    return lines


GPTQ_NOTE = (
    "GPTQ columns: `gptq` is the pass's default since 2026-12-03, act-order with output-error "
    "group scales (`search=output-mse`: each group's scale minimises the output error its "
    "block of the Hessian predicts); `gptq-prev` is the default before (no act-order, "
    "weight-error scales), run before the change; `gptq-act-order` and `gptq-output-mse` "
    "(razer4) each have one half of the change; `F-max-prev` is F-max (rotation + GPTQ) with "
    "GPTQ's previous defaults. Every row's exact options: Pipelines below.")


def headline(by: dict[str, dict]) -> list[str]:
    """Perplexity per weight format (rows) and method (columns), the claims' formats first:
    the table at a glance (README quotes it). A blank cell: that row was not run."""
    weight_only = [r for r in by.values() if r.get("runs") and not r.get("act")
                   and not r.get("kv")]
    methods = [m for m in plan.METHODS + ("gptq-prev", "F-max-prev", "pot-refine")
               if any(r["method"] == m for r in weight_only)]
    fmts = list(plan.CLAIM_FORMATS) + [f for f in plan.WEIGHT_FORMATS
                                       if f not in plan.CLAIM_FORMATS]
    fp = by.get("fp", {})
    lines = [f"| format (g) | bits/weight | {' | '.join(methods)} |",
             "|---|---|" + "---|" * len(methods)]
    for f in fmts:
        cells = []
        for m in methods:
            row = by.get(f"{f}|{m}||", {})
            ppl = mean(row, "perplexity") if row.get("runs") else None
            sp = spread(row)
            cells.append("" if ppl is None else f"{ppl:.2f}" + (f" ±{sp / 2:.2f}" if sp else ""))
        if any(cells):
            bpw = next(by[f"{f}|{m}||"]["bpw"] for m in methods
                       if by.get(f"{f}|{m}||", {}).get("runs"))
            lines.append(f"| {f} ({plan.group_for(f)}) | {bpw:.3f} | {' | '.join(cells)} |")
    if fp.get("runs"):
        lines += ["", f"fp32: {mean(fp, 'perplexity'):.2f}. Perplexity, lower is better; "
                  "± half the spread over calibration seeds where there are several."]
    return lines


def plan_note() -> str:
    return "SmolLM2-135M, Q4_1-derived weights"


def compare(a: dict, b: dict) -> tuple[str, str]:
    """(verdict, text) for 'row a beats row b' by mean perplexity, spread-aware. A row that was
    not run is a stub without runs (`stub`): the verdict is 'missing'."""
    if not a.get("runs") or not b.get("runs"):
        return "missing", f"{a['format']} {label(a)} vs {b['format']} {label(b)}"
    pa, pb = mean(a, "perplexity"), mean(b, "perplexity")
    noise = max(spread(a) or 0.0, spread(b) or 0.0)
    one_seed = any(x["calibrated"] and len(x["runs"]) < 2 for x in (a, b))
    gap = pb - pa
    verdict = "held" if gap > noise else "not held" if -gap > noise else "tie"
    bits = a["bpw"] - b["bpw"]
    bits_txt = "equal bits" if abs(bits) < 1e-9 else f"{a['format']} {bits:+.3f} b/w"
    kl = (f"KL {mean(a, 'kl_mean'):.4f} vs {mean(b, 'kl_mean'):.4f}")
    text = (f"{a['format']} {label(a)} ppl {pa:.3f} vs {b['format']} {label(b)} {pb:.3f} "
            f"({bits_txt}; {kl}")
    text += ("; one calibration seed, no spread)" if one_seed and verdict != "tie"
             else f"; spread {noise:.3f})" if noise else ")")
    return verdict, text


def overall(verdicts: list[str]) -> str:
    got = [v for v in verdicts if v != "missing"]
    if not got:
        return "NOT MEASURED"
    if all(v == "held" for v in got):
        return "HELD" + (" (where measured)" if len(got) < len(verdicts) else "")
    if all(v == "not held" for v in got):
        return "NOT HELD"
    if all(v == "tie" for v in got):
        return "TIE (every gap within the calibration spread)"
    counts = ", ".join(f"{v} {got.count(v)}" for v in ("held", "tie", "not held"))
    if "not held" not in got:  # never worse beyond the spread, better in some comparisons
        return f"HELD OR TIED ({counts} of {len(got)} measured)"
    return f"MIXED ({counts} of {len(got)} measured)"


def stub(r: plan.Row) -> dict:
    """A planned row that has not run: what `compare` needs to name it."""
    return {"format": r.format, "method": r.method, "act": r.act, "kv": r.kv, "runs": [],
            "calibrated": r.calibrated, "bpw": 0.0}


def claims(by: dict[str, dict]) -> list[str]:
    def row(fmt, method, act=None, kv=None):
        r = plan.Row(fmt, method, act, kv)
        return by.get(r.key) or stub(r)

    out = ["## The papers' claims, checked on this table", "",
           f"On {Q41}. Verdict by mean WikiText-2 perplexity; a gap within the calibration "
           "spread is a tie. `missing`: a row the comparison needs was not run.", ""]
    sections = []
    pairs = [(m, r) for m in plan.METHODS for r in ("fp4", "int4", "int4-sym")]
    sections.append(("RaZeR (razer4) beats FP4 and INT4 at equal or fewer bits, RTN and with "
                     "GPTQ/AWQ (seed 000)",
                     [compare(row("razer4", m), row(r, m)) for m, r in pairs]))
    sections.append(("NVFP4-RaZeR beats NVFP4 (RaZeR v2)",
                     [compare(row("nvfp4-razer", m), row("nvfp4", m)) for m in plan.METHODS]))
    sections.append(("PoT-3 with refinement beats INT3 (seed 001)",
                     [compare(row("pot3", "pot-refine"), row("int3", m))
                      for m in ("rtn", "gptq")] +
                     [compare(row("pot3", "pot-refine"), row("pot3", "rtn"))]))
    w = plan.W4A8_WEIGHTS
    sections.append(("W4A8 with FP8-E4M3 activations beats INT8 activations (seed 002)",
                     [compare(row(w, m, "fp8-e4m3"), row(w, m, "int8"))
                      for m in ("w4a8", "smooth", "aqas")]))
    sections.append(("AQAS beats SmoothQuant at W4A8 (seed 003)",
                     [compare(row(w, "aqas", a), row(w, "smooth", a)) for a in plan.ACTS]))
    for title, results in sections:
        out.append(f"- **{title}: {overall([v for v, _ in results])}.**")
        out += [f"  - {v}: {t}" for v, t in results if v != "missing"]
        missing = [t for v, t in results if v == "missing"]
        if missing:
            out.append("  - not measured (a row was not run): " + "; ".join(missing))
    out += ["", "Bits: at g64 razer4 stores a 2-bit special-value index per group, 0.031 b/w "
            "more than fp4 and int4-sym (fp16 scale only) and 0.094 b/w fewer than int4 (8-bit "
            "zero point): against fp4/int4-sym the claim's 'equal or fewer bits' does not hold "
            "by construction; the comparisons above state the difference.", ""]
    return out


POT3_NOTE = (
    "pot3 RTN is not a bug in the quantizer: PoT (FORMATS.md, PoTPTQ) has no code for zero, so "
    "every weight below max/16 of its g64 group is stored as +-max/8 instead of near 0. Per "
    "linear its weight error stays close to int3's, yet the model collapses. "
    "bench/pot3_diagnosis.py (results: bench/results/pot3_diagnosis.md) reproduces it with the "
    "formats' own quantize/dequantize, no pipeline, and changes one thing at a time: a zero code, "
    "the columns that read the 1% largest-RMS input channels kept fp, pot3 on v_proj alone or on "
    "every other linear alone.")


def deviations(state: dict, seeds: int) -> list[str]:
    got = {"eval_tokens": state.get("eval_tokens", 0),
           "calib_samples": state.get("calib_samples"),
           "calib_seqlen": state.get("calib_seqlen"), "seeds": seeds}
    out = [f"- {k.replace('_', ' ')}: {got[k]} (spec: {'at least ' if k == 'eval_tokens' else ''}"
           f"{v})" for k, v in SPEC.items() if got[k] is not None and got[k] < v]
    if state.get("note"):
        out.append(f"- why: {state['note']}")
    return out


def markdown(state: dict, seeds: int) -> str:
    import torch
    import transformers

    rows = list(state["rows"].values())
    by = {r["key"]: r for r in rows}
    lines = ["# Accuracy on a real LLM: SmolLM2-135M on WikiText-2", "",
             f"Model: {Q41} (`zoo:smollm2-135m`). Every perplexity and KL below is of this "
             "model, not of the bf16 original.  ",
             f"Command: `{state.get('command', '')}`  ",
             f"Run: {state.get('started', '?')} to {state.get('updated', '?')}  ",
             f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, last run as "
             f"{state.get('processes', f'1 x {torch.get_num_threads()} torch thread(s)')} "
             "(the run history says what else ran), "
             f"Python {platform.python_version()}, torch {torch.__version__}, transformers "
             f"{transformers.__version__}", "",
             f"Evaluation: wiki.test.raw, {state.get('evaluation', '?')}. Perplexity: exp of "
             "the mean loss over every predicted token; KL: mean and 99th percentile of "
             "KL(P_fp ‖ P_quant) per position; top-1: agreement of argmax with the fp model.  ",
             f"Calibration: {state.get('calib_samples')} x {state.get('calib_seqlen')} tokens "
             "(BOS + text) from the second half of the lines (never evaluated on), drawn by "
             f"seed; calibrated rows run {seeds} seeds: mean, and spread = max - min of "
             "perplexity.  ",
             "Formats at g64 (nvfp4 family g16, mxfp4 g32); bits/weight counts codes, scales "
             "and metadata of the quantized linears (embedding and LM head stay fp). W4A8 rows: "
             f"{plan.W4A8_WEIGHTS} weights RTN, per-token activations.", ""]
    dev = deviations(state, seeds)
    if dev:
        lines += ["**Below the spec's sizes in this run:**", ""] + dev + [""]
    lines += ["## At a glance: perplexity by format and method", ""] + headline(by) + [""]
    if any(r["method"] in plan.GPTQ_VARIANTS and r.get("runs") for r in rows):
        lines += [GPTQ_NOTE, ""]
    lines += ["## Table", ""] + table(rows, seeds) + [""]
    planned = plan.rows()
    missing = [r for r in planned if not by.get(r.key, {}).get("runs")
               and "error" not in by.get(r.key, {})]
    partial = [r for r in planned if r.calibrated and by.get(r.key, {}).get("runs")
               and len(by[r.key]["runs"]) < seeds]
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["Dropped (the pipeline failed on this model; the reason):", ""]
        lines += [f"- {r['format']} {label(r)}: {r['error']}" for r in errors] + [""]
    if partial:
        lines += ["Fewer seeds than asked (the run stopped first): " + ", ".join(
            f"{r.format} {r.method}{' ' + r.act if r.act else ''} "
            f"({len(by[r.key]['runs'])}/{seeds})" for r in partial) + ".", ""]
    if missing:
        lines += [f"Not run ({len(missing)} of {len(planned)} planned rows; the run "
                  "stopped at its time limit before reaching them, or --only left them out): " + ", ".join(
                      f"{r.format} {r.method}{' ' + r.act if r.act else ''}" for r in missing)
                  + ".", ""]
    if any(r["format"] == "pot3" and r["method"] == "rtn" and r["runs"] for r in rows):
        lines += [POT3_NOTE, ""]
    lines += claims(by)
    lines += ["## Pipelines", "", "Every row's pipeline (`qcompile zoo:smollm2-135m --pipeline "
              "'...'`):", ""] + [f"- {r['format']} {label(r)}: `{r['pipeline']}`" for r in rows]
    return "\n".join(lines) + "\n"

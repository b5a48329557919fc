"""Benchmark the generated fused-dequant kernels against fp16 cuBLAS, on a CUDA GPU.

The one-command GPU run (correctness, Llama-3-8B shapes, decode tok/s, <= 8 minutes, rows
written as they come) is bench/gpu_all.py; this script is the configurable per-shape table.
It launches the shipped configs (codegen/tuned/<GPU>.json) or the untuned defaults and does not
tune unless --autotune is given (an autotune sweep compiles dozens of configs per shape).

    python bench/kernel_speed.py                      # Llama-2-7B / Llama-3-8B shapes, M = 1..256
    python bench/kernel_speed.py --e2e                # plus batch-1 decode of a Llama-2-7B-shaped stack
    python bench/kernel_speed.py --interpret-smoke    # CPU: one tiny shape through the same code path

For every (N x K) layer shape, M and format: the kernel's median time (triton.testing, inside
a CUDA graph by default so launch overhead does not hide microsecond kernels; `--timer events`
for plain do_bench), `torch.nn.functional.linear` in fp16 (cuBLAS) on the same shape, the
speedup, and the achieved memory bandwidth (packed weights + scales + x + y bytes / time) as a
fraction of the measured device-to-device copy bandwidth. Every kernel result is checked
against dequantize-then-matmul first. Results go to bench/results/kernels-<gpu>.md with the
date, GPU, torch and triton versions and the command line.

Targets the kernels are designed for (H100, g128): M = 1 at >= 3.5x cuBLAS and >= 85% of copy
bandwidth on 4096x11008 and 11008x4096 for razer4/fp4/int4/pot4; M = 16 not slower than
cuBLAS; M >= 256 within 1.5x. The report marks which rows meet them.
Exit codes: 0 ok, 1 a kernel result was wrong, 2 usage error or no CUDA device.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path

LLAMA_SHAPES = ((4096, 4096), (1024, 4096), (11008, 4096), (4096, 11008), (14336, 4096),
                (4096, 14336))
SMOKE_SHAPES = ((96, 128),)
M_VALUES = (1, 4, 16, 64, 256)
SMOKE_M = (1, 16)
FORMATS = ("int4", "int4-sym", "fp4", "razer4", "pot4", "nf4", "mxfp4", "nvfp4")
TARGET_FORMATS = ("razer4", "fp4", "int4", "pot4")
TARGET_SHAPES = ((4096, 11008), (11008, 4096))
# Llama-2-7B decoder layer, (N, K) of its linears in execution order
LLAMA2_7B_LAYER = (("q", 4096, 4096), ("k", 4096, 4096), ("v", 4096, 4096), ("o", 4096, 4096),
                   ("gate", 11008, 4096), ("up", 11008, 4096), ("down", 4096, 11008))
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    fmt: str
    n: int
    k: int
    m: int
    us: float
    fp16_us: float
    bytes_moved: int
    copy_gbs: float
    ok: bool

    @property
    def speedup(self) -> float:
        return self.fp16_us / self.us

    @property
    def gbs(self) -> float:
        return self.bytes_moved / self.us / 1e3

    @property
    def bw_fraction(self) -> float:
        return self.gbs / self.copy_gbs if self.copy_gbs else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated formats")
    parser.add_argument("--group-size", type=int, default=128,
                        help="group size (formats with a fixed block, mxfp4/nvfp4, use theirs)")
    parser.add_argument("--m", default=",".join(map(str, M_VALUES)), help="comma-separated M")
    parser.add_argument("--shapes", default=None, help="NxK,NxK,... (default: Llama shapes)")
    parser.add_argument("--e2e", action="store_true",
                        help="also time batch-1 decode through a Llama-2-7B-shaped linear stack")
    parser.add_argument("--e2e-layers", type=int, default=32)
    parser.add_argument("--timer", choices=("cudagraph", "events"), default="cudagraph")
    parser.add_argument("--autotune", action="store_true",
                        help="tune shapes without a shipped config on first use (slow: a "
                             "sweep of dozens of configs per shape); default: shipped configs "
                             "or the untuned defaults (QCOMPILER_AUTOTUNE=0)")
    parser.add_argument("--save-tuned", type=Path, default=None,
                        help="write the tuned configs (autotune.json layout) to this file")
    parser.add_argument("--out", type=Path, default=None, help="report path (default: "
                        "bench/results/kernels-<gpu>.md)")
    parser.add_argument("--interpret-smoke", action="store_true",
                        help="run one tiny shape on the CPU under TRITON_INTERPRET=1 (tests the "
                             "script, not the speed)")
    args = parser.parse_args(argv)

    if args.interpret_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    os.environ["QCOMPILER_AUTOTUNE"] = "1" if args.autotune else "0"
    import torch

    if not args.interpret_smoke and not torch.cuda.is_available():
        print("error: bench/kernel_speed.py needs a CUDA GPU and none is visible; "
              "run with --interpret-smoke to check the script on the CPU", file=sys.stderr)
        return 2
    try:
        formats = [f for f in args.formats.split(",") if f]
        ms = [int(v) for v in args.m.split(",")]
        shapes = (_parse_shapes(args.shapes) if args.shapes else
                  SMOKE_SHAPES if args.interpret_smoke else LLAMA_SHAPES)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.interpret_smoke:
        ms = [m for m in ms if m in SMOKE_M] or list(SMOKE_M)
    from qcompiler import formats as registry
    from qcompiler.errors import QCompilerError

    for f in formats:
        try:
            registry.get(f)
        except QCompilerError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    device = torch.device("cpu" if args.interpret_smoke else "cuda")
    timer = _make_timer(args.timer, device)
    copy_gbs = _copy_bandwidth(timer, device)
    rows: list[Row] = []
    for n, k in shapes:
        rows += _bench_shape(n, k, ms, formats, args.group_size, device, timer, copy_gbs)
    e2e = _bench_e2e(formats, args, device, timer) if args.e2e else []
    report = _report(rows, e2e, copy_gbs, args, device)
    out = args.out or (None if args.interpret_smoke else RESULTS / f"kernels-{_gpu_slug()}.md")
    if out is None:
        print(report)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
        print(f"wrote {out}", file=sys.stderr)
    if args.save_tuned is not None and not args.interpret_smoke:
        from qcompiler.codegen import runtime

        runtime._TUNED.save(args.save_tuned)
    bad = [r for r in rows if not r.ok]
    for r in bad:
        print(f"error: {r.fmt} {r.n}x{r.k} M={r.m}: kernel result differs from the reference",
              file=sys.stderr)
    return 1 if bad else 0


# ----------------------------------------------------------------------------- measuring


def _make_timer(kind: str, device) -> Callable[[Callable[[], object]], float]:
    """fn -> median microseconds. CUDA: triton.testing (graph replay or events); CPU: wall."""
    if device.type != "cuda":
        def wall(fn: Callable[[], object]) -> float:
            fn()
            times = []
            for _ in range(3):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            return statistics.median(times) * 1e6
        return wall
    import torch
    import triton.testing

    def cuda(fn: Callable[[], object]) -> float:
        fn()  # compile / tune outside the measurement (and outside any graph capture)
        torch.cuda.synchronize()
        if kind == "cudagraph":
            ms = triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")
        else:
            ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
        return ms * 1e3
    return cuda


def _copy_bandwidth(timer, device) -> float:
    """Device-to-device copy bandwidth in GB/s, read + write bytes counted."""
    import torch

    nbytes = (1 << 30) if device.type == "cuda" else (1 << 22)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    us = timer(lambda: dst.copy_(src))
    return 2 * nbytes / us / 1e3


def _bench_shape(n, k, ms, formats, group, device, timer, copy_gbs) -> list[Row]:
    import torch
    import torch.nn.functional as F

    from qcompiler import formats as registry
    from qcompiler.codegen import runtime

    gen = torch.Generator(device=device).manual_seed(n * 31 + k)
    w = (torch.randn(n, k, device=device, generator=gen) * 0.02).to(torch.float16)
    xs = {m: torch.randn(m, k, device=device, generator=gen).to(torch.float16) for m in ms}
    fp16_us = {m: timer(lambda m=m: F.linear(xs[m], w)) for m in ms}
    rows = []
    for fmt_name in formats:
        fmt = registry.get(fmt_name)
        g = group if group in fmt.group_sizes else fmt.default_group_size
        q = fmt.quantize(w.float(), group_size=g, search="rtn")
        tensors = q.tensors()
        ref_w = fmt.dequantize(q)
        for m in ms:
            x = xs[m]

            def run(x=x, tensors=tensors, fmt_name=fmt_name, g=g, opts=q.opts):
                return runtime.linear(x, tensors, format=fmt_name, N=n, K=k, group_size=g,
                                      opts=opts)

            y = run()
            ref = x.float() @ ref_w.T
            ok = bool(((y.float() - ref).abs().max() <= 2e-3 * ref.abs().max() + 1e-3).item())
            us = timer(run)
            moved = q.nbytes() + x.numel() * 2 + m * n * 2
            rows.append(Row(fmt_name, n, k, m, us, fp16_us[m], moved, copy_gbs, ok))
            print(f"{fmt_name:9s} {n}x{k} M={m:<3d} {us:9.1f} us  fp16 {fp16_us[m]:9.1f} us  "
                  f"{fp16_us[m] / us:5.2f}x  {'ok' if ok else 'WRONG'}", file=sys.stderr)
    return rows


def _bench_e2e(formats, args, device, timer) -> list[tuple[str, float]]:
    """Tokens/s of batch-1 decode through `e2e_layers` Llama-2-7B decoder layers' linears
    (random weights; attention replaced by passing q through o, so only the GEMVs count)."""
    import torch
    import torch.nn.functional as F

    from qcompiler import formats as registry
    from qcompiler.codegen import runtime

    layers = 1 if args.interpret_smoke else args.e2e_layers
    if args.interpret_smoke:  # the same structure at hidden 128, intermediate 256
        size = {4096: 128, 11008: 256}
        shapes = [(name, size[n], size[k]) for name, n, k in LLAMA2_7B_LAYER]
    else:
        shapes = list(LLAMA2_7B_LAYER)
    hidden = shapes[0][2]
    gen = torch.Generator(device=device).manual_seed(7)
    weights = [{name: (torch.randn(n, k, device=device, generator=gen) * 0.02).half()
                for name, n, k in shapes} for _ in range(layers)]

    def stack(lin):
        def step(x):
            for layer in weights:
                q = lin(layer, "q", x)
                lin(layer, "k", x)
                lin(layer, "v", x)
                o = lin(layer, "o", q)
                h = F.silu(lin(layer, "gate", o)) * lin(layer, "up", o)
                x = x + lin(layer, "down", h)
            return x
        return step

    x0 = torch.randn(1, hidden, device=device, generator=gen).half()
    out = [("fp16 (cuBLAS)", 1e6 / timer(lambda: stack(lambda L, nm, x: F.linear(x, L[nm]))(x0)))]
    for fmt_name in formats:
        fmt = registry.get(fmt_name)
        g = args.group_size if args.group_size in fmt.group_sizes else fmt.default_group_size
        qs = [{nm: fmt.quantize(t.float(), group_size=g, search="rtn") for nm, t in layer.items()}
              for layer in weights]
        by_id = {id(layer): q for layer, q in zip(weights, qs, strict=True)}

        def lin(layer, nm, x, by_id=by_id, fmt_name=fmt_name, g=g):
            q = by_id[id(layer)][nm]
            return runtime.linear(x, q.tensors(), format=fmt_name, N=q.shape[0], K=q.shape[1],
                                  group_size=g, opts=q.opts)

        out.append((fmt_name, 1e6 / timer(lambda lin=lin: stack(lin)(x0))))
        print(f"e2e {fmt_name}: {out[-1][1]:.1f} tokens/s", file=sys.stderr)
        del qs, by_id
    return out


# ----------------------------------------------------------------------------- report


def _report(rows: list[Row], e2e, copy_gbs: float, args, device) -> str:
    import torch
    import triton

    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (TRITON_INTERPRET=1)"
    cmd = "python bench/kernel_speed.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:]))
    lines = [
        f"# Fused-dequant kernels vs fp16 cuBLAS: {gpu}", "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- GPU: {gpu}",
        (f"- torch {torch.__version__}, triton {triton.__version__}, Python "
         f"{sys.version.split()[0]}"),
        f"- command: `{cmd}`",
        (f"- timer: {args.timer if device.type == 'cuda' else 'wall clock (interpreter)'}, "
         f"median; configs: {_config_source(args, device)}"),
        f"- device-to-device copy bandwidth: {copy_gbs:.0f} GB/s (read + write)",
        "- bytes moved = packed codes + scales (+ zeros / metadata) + x + y; BW% = achieved / copy",
        "",
    ]
    if device.type != "cuda":
        lines += [("**Interpreter smoke run: times are meaningless, only the code path is "
                   "exercised.**"), ""]
    lines += [("| format | N x K | M | kernel us | fp16 us | speedup | GB/s | BW % | check "
               "| target |"),
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.fmt} | {r.n}x{r.k} | {r.m} | {r.us:.1f} | {r.fp16_us:.1f} | "
                     f"{r.speedup:.2f}x | {r.gbs:.0f} | {100 * r.bw_fraction:.0f}% | "
                     f"{'ok' if r.ok else 'WRONG'} | {_target(r)} |")
    if e2e:
        n_layers = 1 if args.interpret_smoke else args.e2e_layers
        lines += ["", (f"## Batch-1 decode, Llama-2-7B-shaped linear stack ({n_layers} layers, "
                       "random weights)"), "",
                  "| weights | tokens/s | vs fp16 |", "|---|---|---|"]
        base = e2e[0][1]
        lines += [f"| {name} | {tps:.1f} | {tps / base:.2f}x |" for name, tps in e2e]
    return "\n".join(lines) + "\n"


def _config_source(args, device) -> str:
    if device.type != "cuda":
        return "interpreter defaults"
    if args.autotune:
        return "shipped configs, else autotuned on this GPU (CUDA-graph timing)"
    return "shipped configs (codegen/tuned), else untuned defaults"


def _target(r: Row) -> str:
    """Which of the design targets this row is held to, and whether it meets it."""
    if r.m == 1 and r.fmt in TARGET_FORMATS and (r.n, r.k) in TARGET_SHAPES:
        met = r.speedup >= 3.5 and r.bw_fraction >= 0.85
        return f"{'met' if met else 'missed'} (>=3.5x, >=85% BW)"
    if r.m == 16:
        return f"{'met' if r.speedup >= 1.0 else 'missed'} (>=1x)"
    if r.m >= 256:
        return f"{'met' if r.speedup >= 1 / 1.5 else 'missed'} (within 1.5x)"
    return ""


def _parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    out = []
    for item in text.split(","):
        n, _, k = item.lower().partition("x")
        if not n.isdigit() or not k.isdigit():
            raise ValueError(f"--shapes expects NxK,NxK,... got {item!r}")
        out.append((int(n), int(k)))
    return tuple(out)


def _gpu_slug() -> str:
    import torch

    name = torch.cuda.get_device_name().lower()
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")


if __name__ == "__main__":
    sys.exit(main())

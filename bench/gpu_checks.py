"""Kernel sections of bench/gpu_all.py: correctness on the GPU and timing (--tune: gpu_tune.py).

Correctness: every format through every kernel family the launcher can pick (the fp16x2 GEMV
at M = 1, the fp32 GEMV (QC_GEMV=fp32, and M = 3), the GEMM at M = 16 and 256, split-K GEMV
and GEMM with a bias, and a split-K GEMV captured in a CUDA graph and replayed on new inputs:
the counters must come back to 0 between replays), each on fresh random inputs, against
x @ dequantize(W)^T in fp32 with the bound of tests/codegen/kernel_helpers.py.

Timing: runtime.linear (the config a model would get: tuned, shipped for this GPU, or the
default), timed by triton.testing.do_bench_cudagraph (median; launch overhead excluded), each call
reading the next of several copies of the weights so that repeated calls do not hit L2 (the
copies together are >= 3x an H200's 60 MB L2); torch fp16 matmul timed the same way.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable

import torch

TARGET_4BIT = ("razer4", "nvfp4-razer", "fp4", "int4", "int4-sym", "nvfp4", "mxfp4", "pot4",
               "nf4")
EPS_FP16 = 2.0 ** -10  # error bound factor (see tests/codegen/kernel_helpers.py)
ROTATE_BYTES = 192 << 20


def quantized(fmt: str, n: int, k: int, device: Any, seed: int):
    from qcompiler import formats
    from qcompiler.codegen.tuned import group_size_for

    g = group_size_for(fmt)
    gen = torch.Generator(device=device).manual_seed(seed)
    w = torch.randn(n, k, device=device, generator=gen) * 0.02
    f = formats.get(fmt)
    q = f.quantize(w, group_size=g, search="rtn")
    return q, g


def _module(fmt: str, n: int, k: int, g: int, opts: Any):
    from qcompiler.codegen import runtime
    from qcompiler.codegen.specialize import make_spec

    return runtime.module_for(make_spec(fmt, n, k, g, opts or None))


def _err_ratio(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
               bias: torch.Tensor | None) -> float:
    xf = x.float()
    ref, mag = xf @ w.T, xf.abs() @ w.abs().T
    if bias is not None:
        ref, mag = ref + bias.float(), mag + bias.float().abs()
    bound = EPS_FP16 * (mag + ref.abs()) + 1e-6
    ratio = ((y.float() - ref).abs() / bound).max()
    return float("inf") if not bool(torch.isfinite(ratio)) else float(ratio)


def correctness(ctx: Any, report: Any, deadline: float) -> None:
    from qcompiler import formats

    n, k = ctx.check_shape
    for fi, fmt in enumerate(ctx.formats):
        if time.time() > deadline:
            report.note("correctness", f"stopped before {fmt}: section budget spent")
            return
        q, g = quantized(fmt, n, k, ctx.device, seed=100 + fi)
        w = formats.get(fmt).dequantize(q).float()
        module = _module(fmt, n, k, g, q.opts)
        t = q.tensors()
        t = {key: v for key, v in t.items() if v is not None}
        gen = torch.Generator(device=ctx.device).manual_seed(fi)

        def x_of(m: int) -> torch.Tensor:
            return torch.randn(m, k, device=ctx.device, generator=gen).half()

        bias = torch.randn(n, device=ctx.device, generator=gen).half()
        for name, m, fn, b in check_calls(module, t, bias, ctx.dry_run):
            x = x_of(m)
            y = fn(x)
            r = _err_ratio(y, x, w, b)
            report.add("correctness", {"format": fmt, "kernel": name, "m": m,
                                       "shape": f"{n}x{k}", "err_ratio": r, "ok": r <= 1.0})
        if ctx.device.type == "cuda":
            r = _graph_replay_check(module, t, w, bias, _split_configs(module)[0], x_of)
            report.add("correctness", {"format": fmt, "kernel": "gemv split-K 4, CUDA graph "
                                       "replays", "m": 1, "shape": f"{n}x{k}", "err_ratio": r,
                                       "ok": r <= 1.0})


def _split_configs(module: Any) -> tuple[dict, dict]:
    return (dict(module.DEFAULT_CONFIGS["gemv"][1], SPLIT_K=4),
            dict(module.DEFAULT_CONFIGS["gemm"][16], SPLIT_K=2))


def check_calls(module: Any, t: dict, bias: torch.Tensor,
                dry_run: bool) -> list[tuple[str, int, Callable, Any]]:
    """(kernel name, M, x -> y, bias) of every correctness check of one format."""
    split_v, split_m = _split_configs(module)
    return [
        ("gemv16 (fp16x2, M=1 default)", 1, lambda x: module.linear(x, t), None),
        ("gemv fp32 (QC_GEMV=fp32)", 1, lambda x: _fp32_gemv(module, x, t), None),
        ("gemv fp32", 3, lambda x: module.linear(x, t), None),
        (_gemm(module), 16, lambda x: module.linear(x, t), None),
        (_gemm(module), 256 if not dry_run else 20, lambda x: module.linear(x, t), None),
        ("gemv split-K 4 + bias", 1, lambda x: module.gemv(x, t, bias, split_v), bias),
        (f"{_gemm(module)} split-K 2 + bias", 16, lambda x: module.gemm(x, t, bias, split_m),
         bias),
    ]


def warm_tasks(ctx: Any) -> list[tuple[str, str, int, int]]:
    """(section, format, N, K) units of compile work, for the parallel prewarm."""
    tasks = []
    if "correctness" in ctx.sections:
        tasks += [("correctness", fmt, *ctx.check_shape) for fmt in ctx.formats]
    if "kernels" in ctx.sections or "decode" in ctx.sections:
        tasks += [("kernels", fmt, n, k) for n, k in ctx.shapes for fmt in ctx.formats]
    return tasks


def warm(ctx: Any, task: tuple[str, str, int, int]) -> None:
    """Run every launch of a task once (compiles into Triton's on-disk cache)."""
    section, fmt, n, k = task
    q, g = quantized(fmt, n, k, ctx.device, seed=0)
    module = _module(fmt, n, k, g, q.opts)
    t = {key: v for key, v in q.tensors().items() if v is not None}
    if section == "correctness":
        bias = torch.randn(n, device=ctx.device).half()
        for _, m, fn, _ in check_calls(module, t, bias, ctx.dry_run):
            fn(torch.randn(m, k, device=ctx.device).half())
    else:
        # the timed M, plus the decode section's: its probe check (M = 4, 8), prefill (16 or
        # 256 rows) and steps (batch 1 or 16)
        for m in sorted(set(ctx.kernel_m) | ({1, 4, 8, 16, 256} if not ctx.dry_run else set())):
            run_linear(fmt, n, k, g, q.opts, torch.randn(m, k, device=ctx.device).half(), t)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()


def run_linear(fmt: str, n: int, k: int, g: int, opts: Any, x: torch.Tensor,
               t: dict) -> torch.Tensor:
    """What a model's qc.linear runs: runtime.linear, with the config it picks (tuned, shipped
    for this GPU, or the default)."""
    from qcompiler.codegen import runtime

    return runtime.linear(x, t, format=fmt, N=n, K=k, group_size=g, opts=opts or None)


def _fp32_gemv(module: Any, x: torch.Tensor, t: dict) -> torch.Tensor:
    old = os.environ.get("QC_GEMV")
    os.environ["QC_GEMV"] = "fp32"
    try:
        return module.linear(x, t)
    finally:
        if old is None:
            os.environ.pop("QC_GEMV", None)
        else:
            os.environ["QC_GEMV"] = old


def _graph_replay_check(module, t, w, bias, cfg, x_of) -> float:
    """Capture a split-K GEMV once, replay it on three new inputs: the workspace and counters
    are reused by every replay, so a counter left non-zero would corrupt the next result."""
    static_x = x_of(1)
    module.gemv(static_x, t, bias, cfg)  # compile, allocate the workspace outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = module.gemv(static_x, t, bias, cfg)
    worst = 0.0
    for _ in range(3):
        static_x.copy_(x_of(1))
        graph.replay()
        torch.cuda.synchronize()
        worst = max(worst, _err_ratio(static_y, static_x, w, bias))
    return worst


# ----------------------------------------------------------------------------- timing


def bench_us(fn: Callable[[], Any]) -> float:
    """Median microseconds of fn inside a CUDA graph (triton.testing)."""
    import triton.testing

    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(fn, rep=25, return_mode="median") * 1e3


def copy_bandwidth() -> float:
    """Device-to-device copy GB/s, bytes read + written, 1 GiB buffers."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / bench_us(lambda: dst.copy_(src)) / 1e3


def _rotating(make: Callable[[], Any], nbytes: int) -> Callable[[], Any]:
    """Several copies of an operand; each call returns the next (defeats L2 reuse)."""
    copies = [make() for _ in range(max(1, min(24, math.ceil(ROTATE_BYTES / max(nbytes, 1)))))]
    state = {"i": 0}

    def next_copy():
        state["i"] = (state["i"] + 1) % len(copies)
        return copies[state["i"]]
    return next_copy


def timing(ctx: Any, report: Any, deadline: float) -> None:
    import torch.nn.functional as F

    copy_gbs = copy_bandwidth() if not ctx.dry_run else float("nan")
    report.note("kernels", f"device-to-device copy bandwidth: {copy_gbs:.0f} GB/s (read + "
                           "write); bytes moved = packed weights + scales/zeros/meta + x + y")
    cache: dict[tuple[str, int, int], Any] = {}
    for m in ctx.kernel_m:
        for n, k in ctx.shapes:
            if time.time() > deadline:
                report.note("kernels", f"stopped at M={m} {n}x{k}: section budget spent")
                return
            x = torch.randn(m, k, device=ctx.device).half()
            w16 = _rotating(lambda: torch.randn(n, k, device=ctx.device).half() * 0.02,
                            n * k * 2)
            fp16_us = ctx.timer(lambda: F.linear(x, w16()))
            for fi, fmt in enumerate(ctx.formats):
                if time.time() > deadline:
                    report.note("kernels", f"stopped at {fmt} M={m} {n}x{k}: budget spent")
                    return
                if (fmt, n, k) not in cache:
                    cache[(fmt, n, k)] = quantized(fmt, n, k, ctx.device, seed=fi)
                q, g = cache[(fmt, n, k)]
                module = _module(fmt, n, k, g, q.opts)
                base = {key: v for key, v in q.tensors().items() if v is not None}
                nbytes = sum(v.numel() * v.element_size() for v in base.values())
                ts = _rotating(lambda base=base: {key: v.clone() for key, v in base.items()},
                               nbytes)
                us = ctx.timer(lambda: run_linear(fmt, n, k, g, q.opts, x, ts()))
                moved = nbytes + x.numel() * 2 + m * n * 2
                gbs = moved / us / 1e3 if us else float("nan")
                row = {"format": fmt, "shape": f"{n}x{k}", "m": m, "kernel": _kernel(module, m),
                       "us": us, "fp16_us": fp16_us, "speedup": fp16_us / us if us else None,
                       "gbs": gbs, "bw_fraction": gbs / copy_gbs if copy_gbs else None}
                row["target"] = _target(row)
                report.add("kernels", row)


def _kernel(module: Any, m: int) -> str:
    if m == 1 and getattr(module, "GEMV16_KERNEL", None) is not None:
        return "gemv16"
    return "gemv" if m <= module.GEMV_MAX_M else _gemm(module)


def _gemm(module: Any) -> str:
    """The GEMM fp16 activations run: "gemm16" (tensor cores, fp16 decode: the 4-bit formats,
    nf4 included) or "gemm" (fp32 decode)."""
    return "gemm16" if getattr(module, "GEMM16_KERNEL", None) is not None else "gemm"


def _target(row: dict) -> str:
    s, bw = row.get("speedup"), row.get("bw_fraction")
    if s is None or s != s:
        return ""
    if row["m"] == 1 and row["format"] in TARGET_4BIT:
        ok = s >= 3.5 and bw is not None and bw >= 0.85
        return f"{'met' if ok else 'missed'} (>=3.5x, >=85% BW)"
    if row["m"] == 16:
        return f"{'met' if s >= 1.0 else 'missed'} (>=1x)"
    return ""

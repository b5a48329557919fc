"""Dequantize once: `qc.linear_<fmt>` nodes become `aten.linear` on a float weight (CPU decode).

The reference implementation of a quantized linear (qcompiler/ops.py) dequantizes its weight
at every call: exact, but on the CPU most of a decode step. `dequantize_linears(gm)` computes
each weight once, with the op's own `dequantize_weight`, stores it as a buffer of `gm` (in the
activation's dtype, as the op casts it) and calls `aten.linear` on it: the same numbers, at 4
bytes per weight (float32) on top of the packed codes, which stay shared with the program.

That is 8x the packed weights: a 7B model would want 28 GB. `fits_in_memory(gm)` says whether
the dequantized weights take at most half the memory available now (MemAvailable); a loaded
model's CPU graphs (forward and the decode program, sharing one copy through a cache)
dequantize only then and otherwise keep the quantized ops (slower, the same numbers), with a
note. `QC_DEQUANTIZE_WEIGHTS=1` / `=0` decides instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx

aten = torch.ops.aten


def dequantize_linears(gm: fx.GraphModule, cache: dict[str, torch.Tensor] | None = None) -> None:
    """qc.linear_<fmt>(x, parts..., bias) -> aten.linear(x, W, bias), W dequantized once by the
    op's own reference (`qcompiler.ops.dequantize_weight`), so the numbers do not change.
    `cache` (layer -> W) lets several graphs of one model (its forward graph and its decode
    program) share one dequantized copy."""
    from qcompiler import ops

    for node in list(gm.graph.nodes):
        fmt = ops.format_of(node.target) if node.op == "call_function" else None
        if fmt is None:
            continue
        x, *parts, bias = node.args
        tensors = {k: _fetch(gm, p.target) if isinstance(p, fx.Node) else None
                   for k, p in zip(ops.PARTS, parts)}
        kw = node.kwargs
        x_val = x.meta.get("val") if isinstance(x, fx.Node) else None
        dtype = x_val.dtype if isinstance(x_val, torch.Tensor) else torch.float32
        key = f"{kw['layer']}:{dtype}"
        w = None if cache is None else cache.get(key)
        if w is None:
            w = ops.dequantize_weight(fmt, tensors, group_size=kw["group_size"], n=kw["n"],
                                      k=kw["k"], opts=kw.get("opts", "")).to(dtype)
            if cache is not None:
                cache[key] = w
        name = kw["layer"].replace(".", "_") + "_dequantized_weight"
        gm.register_buffer(name, w)
        with gm.graph.inserting_before(node):
            w_node = gm.graph.get_attr(name)
            if (isinstance(bias, fx.Node) and bias.op == "get_attr"
                    and _fetch(gm, bias.target).dtype != dtype):
                bias = gm.graph.call_function(aten.to.dtype, (bias, dtype))
            new = gm.graph.call_function(aten.linear.default, (x, w_node, bias))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()


def dequantized_copy(gm: fx.GraphModule,
                     cache: dict[str, torch.Tensor] | None = None) -> fx.GraphModule:
    """A copy of `gm` (sharing its tensors) whose quantized linears use weights dequantized
    once: the same outputs bit for bit, without dequantizing at every call."""
    from qcompiler.routed_experts import copy_graph_module

    out = copy_graph_module(gm)
    dequantize_linears(out, cache)
    out.recompile()
    return out


def dequantized_bytes(gm: fx.GraphModule) -> int:
    """What `dequantize_linears` would add: 4 bytes per quantized weight (float32)."""
    from qcompiler import ops

    return sum(4 * int(n.kwargs["n"]) * int(n.kwargs["k"]) for n in gm.graph.nodes
               if n.op == "call_function" and ops.format_of(n.target) is not None)


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def fits_in_memory(gm: fx.GraphModule) -> bool:
    """Whether to dequantize `gm`'s weights once (module docstring)."""
    forced = os.environ.get("QC_DEQUANTIZE_WEIGHTS")
    if forced in ("0", "1"):
        return forced == "1"
    free = available_bytes()
    return free is None or dequantized_bytes(gm) <= free // 2


def _fetch(gm: torch.nn.Module, target: str) -> torch.Tensor:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj

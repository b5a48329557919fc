"""Helpers for the serving tests: small compiled programs, cached logits, relative error."""

from __future__ import annotations

import torch

import qcompiler
from qcompiler import ops, zoo
from qcompiler.decode_check import run_cached

REL = 1e-4  # cached vs uncached logits, relative to the largest |logit|


def lowered(model: str, fmt: str, kv: str | None = None, **extra: str):
    """`model` lowered to `fmt` (RTN: fast), optionally with quantize-kv{format=kv}."""
    opts = ",".join([f"format={fmt}", "search=rtn", *(f"{k}={v}" for k, v in extra.items())])
    kv_pass = f"quantize-kv{{format={kv}}}," if kv else ""
    spec = f"canonicalize,dce,{kv_pass}lower-datatype{{{opts}}},dce"
    return qcompiler.compile(zoo.load(model), pipeline=spec, quiet=True).program


def every_format_programs() -> list:
    """llama-tiny twice, each linear in its own format: every weight format in two compiles."""
    formats = ops.weight_formats()
    programs = []
    for part in (formats[: len(formats) // 2], formats[len(formats) // 2:]):
        program = zoo.load("llama-tiny")
        layers = [n.args[1].target.removesuffix(".weight") for n in program.linears()]
        override = ";".join(f"{layer.removeprefix('model.')}:format={part[i % len(part)]}"
                            for i, layer in enumerate(layers))
        spec = (f"canonicalize,lower-datatype{{format=int4,skip=,search=rtn,"
                f"override={override}}},dce")
        programs.append((part, qcompiler.compile(program, pipeline=spec, quiet=True).program))
    return programs


def cached_logits(decoder, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits [B, T, V] from the decode program: `prefill` tokens at once, then one by one."""
    return run_cached(decoder, ids, prefill)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())

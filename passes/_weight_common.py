"""What the weight-choosing passes (clip, gptq, pot-refine, lorc) share: which layers they
touch, which format and group size, and where calibration statistics come from.

They select layers exactly as `lower-datatype` does by default (skip the LM head, embeddings,
MoE routers and LoRC's own low-rank linears, and weights that are not floating point), so
that a pipeline `gptq{format=F},lower-datatype{format=F}` plans every layer that gets lowered.
`format` is a required option of these passes: a pass cannot see the rest of the pipeline, and
guessing the lowering format would silently plan for the wrong grid; `group-size` defaults to
the format's default group size, the same default lower-datatype uses. A layer whose K the
group size does not divide is left alone (lower-datatype decides what happens to it, per its
`on-indivisible` option).

`scale` (ZeroQuant-FP's scale constraints) is checked and turned into format options by
passes/_scale_modes.py, which lower-datatype shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch.fx as fx

from qcompiler.errors import PassError, QCompilerError
from qcompiler.program import Program

DEFAULT_SKIP = ("lm_head", "*embed*", "*.lorc_*", "mlp.gate")


@dataclass(frozen=True)
class Layer:
    """One quantizable linear: its name, its weight's name, its node, N, K and group size."""

    name: str
    weight: str
    node: fx.Node
    n: int
    k: int
    group: int


def weight_format(pass_name: str, name: str) -> Any:
    """The weight format `name`, or a one-line PassError naming the pass."""
    from qcompiler import formats

    try:
        fmt = formats.get(name)
    except QCompilerError as e:
        raise PassError(pass_name, str(e).removeprefix("error: ")) from None
    if fmt.role not in ("weight", "both"):
        raise PassError(pass_name, f"'{name}' is an activation format; choose a weight format "
                        "(see 'qcompile formats')")
    return fmt


def select_layers(pass_name: str, program: Program, fmt: Any, group_size: int | None,
                  skip: tuple[str, ...], ctx: Any) -> Iterator[Layer]:
    """The linears this pass plans, in graph order."""
    from qcompiler.passes.lower_datatype import matches

    if program.meta.get("lazy_tensors"):
        raise PassError(pass_name, "calibration needs the weights in memory; compile without "
                        "streaming (stream=False)")
    for node in list(program.linears()):
        weight = str(node.args[1].target)
        name = weight.removesuffix(".weight")
        if any(matches(name, p) for p in skip):
            continue
        value = program.get_tensor(weight)
        if not value.is_floating_point():
            ctx.log(f"{pass_name}: {name} skipped, its weight is {value.dtype}, not floating point")
            continue
        n, k = (int(d) for d in value.shape)
        group = group_size or fmt.default_group_size or k
        if group not in fmt.group_sizes and not (group == k and fmt.per_row):
            allowed = ", ".join(str(g) for g in fmt.group_sizes)
            raise PassError(pass_name, f"format {fmt.name} does not support group size {group} "
                            f"(allowed: {allowed}); set group-size")
        if k % group:
            ctx.log(f"{pass_name}: {name} skipped, group size {group} does not divide K={k}")
            continue
        yield Layer(name, weight, node, n, k, group)

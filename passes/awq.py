"""`awq`: activation-aware weight-only scaling (AWQ, Lin et al., arXiv 2306.00978).

    awq{format=razer4,group-size=128}           then e.g. gptq/clip/lower-datatype to razer4
    awq{format=int4,group-size=64,grid=10}

For a linear y = x·Wᵀ the identity y = (x·diag(s)⁻¹)·(W·diag(s))ᵀ lets input channels that carry
large activations get finer weight quantization: their weight columns are scaled up before
rounding, the activation down. AWQ's search, per input of one or more linears (q/k/v share
theirs): s = mean|x|^α (normalised so that sqrt(max·min) = 1), α = 0, 1/grid, ..., 1, keeping
the α of least output error of the quantized weights on calibration rows X,

    Σ_consumers ‖ X·(Qw(W·diag(s))·diag(s)⁻¹ − W)ᵀ ‖²

with Qw = `format` at `group-size`, RTN (a later clip/gptq/lower-datatype chooses the final
values). α = 0 is s = 1, so on the calibration rows the error is never above plain RTN's.

Where 1/s goes (the function is kept exactly, up to rounding of the new tensors):
- folded, free at run time, when `passes/smooth.py` finds a producer that can absorb it: a norm
  whose output only feeds these linears (its weight and bias are divided), v_proj's rows for
  o_proj (through attention), up_proj's rows for down_proj;
- otherwise an explicit per-channel `aten.mul` of the activation by 1/s right before the linears
  (a new constant `<layer>.awq_inv_scale`, one mul of T×K elements per group at run time). In
  BERT-style post-norm encoders that is q/k/v and the intermediate dense (the LayerNorm output
  also feeds the residual, so the norm cannot absorb 1/s) and the output dense (GELU's output is
  not linear in anything): 3 muls per layer; the attention output dense folds into the value
  rows. The notes (-vv) say which group got which.
Groups whose best α is 0 are left unchanged. Must run before lower-datatype (and before
clip/gptq, whose plans a later weight change would invalidate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from qcompiler.errors import PassError, QCompilerError
from qcompiler.pass_registry import register_pass
from qcompiler.passes._weight_common import DEFAULT_SKIP, select_layers, weight_format
from qcompiler.passes_base import Pass, PassContext, PassResult
from qcompiler.program import Program

aten = torch.ops.aten
MAX_SAMPLES = 2048  # calibration rows per group input the search evaluates
MIN_SCALE = 1e-4


@dataclass
class _Group:
    """Selected linears reading one input, and how 1/s is applied."""

    input: fx.Node
    linears: list[Any]  # _weight_common.Layer
    fold: Any = None  # smooth.ScaleGroup when 1/s folds into a producer, else None


def awq_scales(mean_abs: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = mean|x|^α, normalised to sqrt(max·min) = 1; 1 for dead channels."""
    m = mean_abs.to(torch.float64).clamp(min=1e-8)
    s = m.pow(alpha)
    s = s / (s.max() * s.min()).sqrt()
    s = torch.where(mean_abs > 0, s.clamp(min=MIN_SCALE), torch.ones_like(s))
    return s.to(torch.float32)


def scaled_error(x: torch.Tensor, weights: list[tuple[torch.Tensor, int]], s: torch.Tensor,
                 fmt: Any) -> float:
    """Σ ‖x·(Qw(W·s)/s − W)ᵀ‖² over (W, group size) pairs, Qw = fmt with RTN."""
    total = 0.0
    for w, group in weights:
        wq = fmt.dequantize(fmt.quantize(w * s[None, :], group_size=group, search="rtn"))
        total += float((x @ (wq / s[None, :] - w).T).square().sum())
    return total


@register_pass
@dataclass(frozen=True)
class Awq(Pass):
    """AWQ: activation-aware per-input-channel weight scaling searched against quant error."""

    name = "awq"
    format: str
    group_size: int | None = None
    grid: int = 20
    fold: bool = True  # fold 1/s into a producer where smooth's matcher finds one
    skip: tuple[str, ...] = DEFAULT_SKIP

    def __post_init__(self) -> None:
        if self.grid < 1:
            raise ValueError(f"grid must be at least 1, got {self.grid}")

    def apply(self, program: Program, ctx: PassContext) -> PassResult:
        from qcompiler.calibration import calibration_batches, collect_linear_stats
        from qcompiler.ops import is_quantized_linear
        from qcompiler.weight_plan import plans

        if any(is_quantized_linear(n.target) for n in program.nodes("call_function")):
            raise PassError(self.name, "the program already has quantized qc.linear_* layers; "
                            "run awq before lower-datatype")
        if plans(program):
            raise PassError(self.name, "weights are already planned (clip/gptq/...); run awq "
                            "before them")
        fmt = weight_format(self.name, self.format)
        groups = self._groups(program, fmt, ctx)
        if not groups:
            return PassResult(False, {"groups-changed": 0})
        batches = calibration_batches(program, ctx)
        stats = collect_linear_stats(program, batches, [g.linears[0].name for g in groups],
                                     absmax=False, max_samples=MAX_SAMPLES, ctx=ctx)
        changed = folded = 0
        notes = []
        for group in ctx.progress(groups, total=len(groups), desc=self.name):
            x = stats[group.linears[0].name].samples
            s, alpha, base, best = self._search(program, group, x, fmt)
            names = ", ".join(l.name for l in group.linears)
            notes.append(f"{group.linears[0].name} a={alpha:g} {base:.3g}->{best:.3g}")
            if alpha == 0:
                ctx.log(f"{self.name}: {names}: alpha 0, unchanged", level=2)
                continue
            changed += 1
            if group.fold is not None:
                from qcompiler.passes.smooth import apply_scales

                apply_scales(program, group.fold, group.fold.reduce(s))
                folded += 1
                ctx.log(f"{self.name}: {group.fold.describe()} (alpha {alpha:g})", level=2)
            else:
                self._insert_mul(program, group, s)
                ctx.log(f"{self.name}: explicit mul by 1/s before {names} (alpha {alpha:g})",
                        level=2)
        program.recompile()
        ctx.log(f"{self.name}: output error per group (RTN->scaled): {'; '.join(notes)}")
        return PassResult(True, {"groups-changed": changed, "groups-folded": folded,
                                 "groups-mul": changed - folded,
                                 "layers": sum(len(g.linears) for g in groups)})

    # ---- groups ----------------------------------------------------------------------------
    def _groups(self, program: Program, fmt: Any, ctx: PassContext) -> list[_Group]:
        from qcompiler.passes.smooth import find_groups

        layers = list(select_layers(self.name, program, fmt, self.group_size, self.skip, ctx))
        by_input: dict[fx.Node, list[Any]] = {}
        for layer in layers:
            by_input.setdefault(layer.node.args[0], []).append(layer)
        folds: dict[str, Any] = {}
        if self.fold:
            found, _ = find_groups(program, self.skip, self.name)
            for g in found:
                folds[g.layers[0]] = g
        out = []
        for node, members in by_input.items():
            fold = folds.get(members[0].name)
            if fold is not None and set(fold.layers) != {l.name for l in members}:
                fold = None
            if fold is None:
                # an explicit mul feeds only the selected linears that read `node` directly;
                # any linear reading it through a view keeps the unscaled path, so skip those
                if not all(l.node.args[0] is node for l in members):
                    ctx.log(f"{self.name}: skipped {members[0].name}: input read through a view",
                            level=2)
                    continue
            out.append(_Group(node, members, fold))
        # folds into a linear's rows first (v_proj for o_proj, up_proj for down_proj): the
        # groups that also read that linear (q/k/v, gate/up) then search on its final rows
        out.sort(key=lambda g: not (g.fold is not None and g.fold.from_linear))
        return out

    # ---- search ----------------------------------------------------------------------------
    def _search(self, program: Program, group: _Group, x: torch.Tensor, fmt: Any,
                ) -> tuple[torch.Tensor, float, float, float]:
        """(s per input channel, α, RTN error, chosen error)."""
        weights = [(program.get_tensor(l.weight).detach().to(torch.float32), l.group)
                   for l in group.linears]
        mean_abs = x.abs().mean(0)
        if group.fold is not None:  # one s per producer channel (GQA repeats share it)
            mean_abs = group.fold.expand(group.fold.reduce(mean_abs))
        best = None
        for i in range(self.grid + 1):
            alpha = i / self.grid
            s = awq_scales(mean_abs, alpha)
            try:
                err = scaled_error(x, weights, s, fmt)
            except QCompilerError as e:
                raise PassError(self.name, f"{group.linears[0].name}: "
                                f"{str(e).removeprefix('error: ')}") from None
            if best is None:
                base = err
            if best is None or err < best[2]:
                best = (s, alpha, err)
        return best[0], best[1], base, best[2]

    # ---- applying --------------------------------------------------------------------------
    def _insert_mul(self, program: Program, group: _Group, s: torch.Tensor) -> None:
        """W ← W·diag(s) for each linear; x ← x·(1/s) by a new mul feeding only these linears."""
        from qcompiler.ir.meta import infer_node_meta

        for layer in group.linears:
            w = program.get_tensor(layer.weight)
            program.set_tensor(layer.weight, (w.to(torch.float32) * s[None, :]).to(w.dtype))
        x = group.input
        val = x.meta.get("val")
        dtype = val.dtype if isinstance(val, torch.Tensor) else torch.float32
        name = program.add_tensor(f"{group.linears[0].name}.awq_inv_scale",
                                  (1.0 / s.to(torch.float64)).to(dtype))
        first = min((l.node for l in group.linears), key=_order(program))
        graph = program.graph
        with graph.inserting_before(first):
            attr = graph.create_node("get_attr", name, name=name.replace(".", "_"))
            infer_node_meta(attr)
            mul = graph.call_function(aten.mul.Tensor, (x, attr))
            infer_node_meta(mul)
        for key in ("nn_module_stack", "stack_trace"):
            if key in first.meta:
                mul.meta[key] = first.meta[key]
        for layer in group.linears:
            layer.node.replace_input_with(x, mul)


def _order(program: Program):
    index = {n: i for i, n in enumerate(program.graph.nodes)}
    return index.__getitem__

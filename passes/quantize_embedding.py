"""`quantize-embedding`: token-embedding tables as int8 rows with one scale per row.

The input embedding of a small LLM is a large share of its parameters (SmolLM2-135M: 28 M of
135 M; a 262k-vocabulary model: most of them) and stays in floating point by default, so after
4-bit lowering of the linears it dominates the artifact. A lookup reads a handful of rows per
token, so the table is a storage cost, not a bandwidth one: int8 per row (absmax / 127, fp16
scale) quarters it at an error far below the 4-bit weights', and the lookup stays plain aten:

    rows  = aten.embedding(codes_int8, ids)            # [.., H] int8
    scale = aten.embedding(scales, ids)                # [.., 1] fp16
    out   = rows.to(fp32) * scale.to(fp32)

(no new op: the IR printer, parser, decode program and every backend already know these).
A table that a floating-point linear also reads (an LM head tied to the embedding and kept in fp,
the default) is left alone with a note: quantizing it would store the table twice; quantize the
head too (`qcompile --quantize-head`, i.e. `lower-datatype{skip=...}` without `lm_head`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

from qcompiler.pass_registry import register_pass
from qcompiler.passes_base import Pass, PassContext, PassResult
from qcompiler.program import Program

aten = torch.ops.aten
EMBEDDING = aten.embedding.default


def quantize_rows(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes [V, H] and fp16 scales [V, 1] with table ~= codes * scales (absmax / 127 per
    row, rounded to nearest; an all-zero row gets scale 1 and codes 0)."""
    t = table.detach().to(torch.float32)
    absmax = t.abs().amax(dim=1, keepdim=True)
    scale = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax)).to(torch.float16)
    codes = torch.round(t / scale.to(torch.float32)).clamp_(-127, 127).to(torch.int8)
    return codes, scale


def dequantize_rows(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The fp32 table the lookups see (reference for tests and reports)."""
    return codes.to(torch.float32) * scales.to(torch.float32)


def _embedding_tables(program: Program) -> dict[str, list[fx.Node]]:
    """get_attr target -> the embedding lookups that read it as their table."""
    tables: dict[str, list[fx.Node]] = {}
    for node in program.graph.find_nodes(op="call_function", target=EMBEDDING):
        weight = node.args[0]
        if isinstance(weight, fx.Node) and weight.op == "get_attr":
            tables.setdefault(str(weight.target), []).append(node)
    return tables


def _other_readers(program: Program, name: str, lookups: list[fx.Node]) -> list[fx.Node]:
    """Nodes other than the lookups that read the table `name` (e.g. a tied fp LM head)."""
    readers = []
    for attr in program.graph.find_nodes(op="get_attr"):
        if str(attr.target) == name:
            readers += [u for u in attr.users if u not in lookups]
    return readers


def _rewrite(program: Program, lookup: fx.Node, codes_name: str, scales_name: str) -> None:
    graph = program.graph
    ids = lookup.args[1]
    with graph.inserting_before(lookup):
        codes = graph.get_attr(codes_name)
        scales = graph.get_attr(scales_name)
        rows = graph.call_function(EMBEDDING, (codes, ids))
        row_scales = graph.call_function(EMBEDDING, (scales, ids))
        wide = graph.call_function(aten._to_copy.default, (rows,), {"dtype": torch.float32})
        wide_scales = graph.call_function(aten._to_copy.default, (row_scales,),
                                          {"dtype": torch.float32})
        out = graph.call_function(aten.mul.Tensor, (wide, wide_scales))
    out.meta.update({k: v for k, v in lookup.meta.items() if k in ("val", "tensor_meta")})
    lookup.replace_all_uses_with(out)
    graph.erase_node(lookup)


@register_pass
@dataclass(frozen=True)
class QuantizeEmbedding(Pass):
    """Store token-embedding tables as int8 rows with an fp16 scale per row."""

    name = "quantize-embedding"

    def apply(self, program: Program, ctx: PassContext) -> PassResult:
        changed = 0
        for name, lookups in sorted(_embedding_tables(program).items()):
            table = program.get_tensor(name)
            if not table.is_floating_point() or table.dim() != 2:
                continue
            readers = _other_readers(program, name, lookups)
            if readers:
                ctx.warn(f"{self.name}: {name} is also read by {readers[0].name} (a tied LM "
                         "head kept in fp?): left in fp; quantize the head too "
                         "(qcompile --quantize-head) to quantize both")
                continue
            codes, scales = quantize_rows(table)
            codes_name = program.add_tensor(f"{name}_int8", codes)
            scales_name = program.add_tensor(f"{name}_row_scales", scales)
            for lookup in lookups:
                _rewrite(program, lookup, codes_name, scales_name)
            changed += 1
        if changed:
            program.recompile()
        return PassResult(changed > 0, {"tables-quantized": changed})

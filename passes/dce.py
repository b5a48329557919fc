"""`dce`: dead-code elimination over the graph and the tensors behind it.

Programs are functional (torch.export graphs), so a node nobody uses can go, unless fx marks
it side-effecting (runtime asserts such as `_assert_scalar` guard dynamic shapes and stay).
Random ops count as pure here: a dead `rand` changes nothing an inference user can observe.
Unused `get_attr` nodes go too, and so do the tensors only they referenced: after a pass
replaces a weight, the old one must not be saved into the artifact. Graph inputs always stay.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from qcompiler.pass_registry import register_pass
from qcompiler.passes_base import Pass, PassContext, PassResult
from qcompiler.program import Program


def eliminate_dead_code(program: Program) -> tuple[int, int]:
    """Remove dead nodes and orphaned tensors; returns (nodes removed, tensors removed)."""
    graph = program.graph
    removed_targets: set[str] = set()
    nodes_removed = 0
    for node in reversed(list(graph.nodes)):
        if node.users or node.op in ("placeholder", "output") or _has_side_effect(node):
            continue
        if node.op == "get_attr":
            removed_targets.add(str(node.target))
        graph.erase_node(node)
        nodes_removed += 1
    still_used = {str(n.target) for n in graph.find_nodes(op="get_attr")}
    tensors_removed = 0
    for target in sorted(removed_targets - still_used):
        if program.has_tensor(target):
            program.delete_tensor(target)
            tensors_removed += 1
    return nodes_removed, tensors_removed


def _has_side_effect(node: fx.Node) -> bool:
    if node.op == "get_attr":
        return False
    return node.is_impure(impure_random=False)


@register_pass
@dataclass(frozen=True)
class DCE(Pass):
    """Remove dead nodes, unused parameters and the tensors behind them."""

    name = "dce"

    def apply(self, program: Program, ctx: PassContext) -> PassResult:
        nodes, tensors = eliminate_dead_code(program)
        return PassResult(nodes > 0, {"nodes-removed": nodes, "tensors-removed": tensors})

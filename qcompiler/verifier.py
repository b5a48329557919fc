"""The verifier: structural checks that every pass must leave true.

Run by the pass manager after each pass (as MLIR does), so a pass that breaks the graph is named
at once instead of surfacing later as an obscure failure in export, codegen or at runtime:
- the fx graph lints (topological order, every operand defined, names unique);
- every `get_attr` names an existing tensor;
- placeholders match the program's inputs, one by one;
- there is exactly one output node, last, returning values;
- every `qc.*` op satisfies its definition (qcompiler/dialect/defs.py): operand count,
  attribute types and allowed values, element types, shapes (a quantized linear's scales
  must be [n, k/group_size], its codes [n, k*bits/8], ...) and conditions; a `qc`-namespace
  op without a definition is held to its schema's required arguments, and its `format` and
  `group_size` attributes, if any, must make sense.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from qcompiler.dialect.registry import check_node, definition_of
from qcompiler.errors import VerifyError


def verify(program: Any, *, after: str | None = None) -> None:
    """Raise VerifyError ("verify failed after PASS: ...") on the first problems found."""
    problems = find_problems(program)
    if problems:
        where = f"after {after}" if after else "on the input program"
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise VerifyError(f"verify failed {where}: {'; '.join(problems[:3])}{more}")


def find_problems(program: Any) -> list[str]:
    """Every problem as a short sentence; empty when the program is well formed."""
    gm: fx.GraphModule = program.gm
    graph = gm.graph
    problems: list[str] = []
    problems += _check_get_attrs(gm)
    problems += _check_placeholders(graph, len(program.input_names), len(program.example_inputs))
    problems += _check_output(graph)
    for node in graph.nodes:
        if node.op == "call_function" and _is_qc_op(node.target):
            problems += _check_qc_op(node, lambda n: _stored_tensor(gm, n))
    if not problems:
        try:
            graph.lint()
        except Exception as e:  # lint raises RuntimeError and AssertionError
            problems.append(f"graph lint: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    return problems


def _check_get_attrs(gm: fx.GraphModule) -> list[str]:
    problems = []
    for node in gm.graph.find_nodes(op="get_attr"):
        obj: Any = gm
        try:
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
        except AttributeError:
            problems.append(f"%{node.name} refers to missing tensor '{node.target}'")
            continue
        if not isinstance(obj, torch.Tensor):
            problems.append(f"%{node.name} refers to '{node.target}', a "
                            f"{type(obj).__name__}, not a tensor")
    return problems


def _check_placeholders(graph: fx.Graph, n_names: int, n_inputs: int) -> list[str]:
    placeholders = list(graph.find_nodes(op="placeholder"))
    if len(placeholders) != n_names or n_names != n_inputs:
        message = (f"{len(placeholders)} placeholders for {n_names} input names and "
                   f"{n_inputs} example inputs")
        return [message]
    return []


def _check_output(graph: fx.Graph) -> list[str]:
    outputs = [n for n in graph.nodes if n.op == "output"]
    if len(outputs) != 1:
        return [f"expected one output node, found {len(outputs)}"]
    out = outputs[0]
    if out is not list(graph.nodes)[-1]:
        return ["the output node is not the last node"]
    if not out.args or out.args[0] is None:
        return ["the output returns nothing"]
    return []


QC_NAMESPACES = ("qc",)  # torch.library namespaces of our quantized ops


def _is_qc_op(target: Any) -> bool:
    return isinstance(target, torch._ops.OpOverload) and target.namespace in QC_NAMESPACES


def _stored_tensor(gm: fx.GraphModule, node: fx.Node) -> Any:
    """The tensor a get_attr node reads (what runs, even if its meta["val"] is stale)."""
    if node.op != "get_attr":
        return None
    obj: Any = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, torch.Tensor) else None


def _check_qc_op(node: fx.Node, value_of: Any = None) -> list[str]:
    """The op's definition holds, or (no definition) the schema's required arguments are
    given and known attributes have sane values."""
    schema = node.target._schema
    op = f"{node.target.namespace}.{schema.name.split('::')[-1]}"
    if definition_of(node.target) is not None:
        return [f"%{node.name} ({op}) {problem}" for problem in check_node(node, value_of)]
    names = [a.name for a in schema.arguments]
    problems = [f"%{node.name} ({op}) has unknown attribute '{k}'"
                for k in node.kwargs if k not in names]
    if len(node.args) > len(schema.arguments):
        problems.append(f"%{node.name} ({op}) has {len(node.args)} operands, "
                        f"its schema takes {len(schema.arguments)}")
    values: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args) and not arg.kwarg_only:
            values[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            values[arg.name] = node.kwargs[arg.name]
        elif not arg.has_default_value():
            problems.append(f"%{node.name} ({op}) is missing attribute '{arg.name}'")
    group = values.get("group_size")
    if isinstance(group, int) and group <= 0:
        problems.append(f"%{node.name} ({op}) has group_size={group}, expected > 0")
    fmt = values.get("format")
    if isinstance(fmt, str):
        from qcompiler.named_pipelines import format_names

        known = format_names()
        if known is not None and fmt not in known:
            problems.append(f"%{node.name} ({op}) has unknown format '{fmt}'")
    return problems

"""Textual IR: deterministic, one op per line, MLIR-flavoured, FileCheck-friendly.

    qc.func @main(%input_ids: tensor<1x?xi64>) -> tensor<1x?x512xf32> {
      %model_norm_weight = qc.param "model.norm.weight" : tensor<128xf32>
      %linear = aten.linear(%mul_3, %model_layers_0_self_attn_q_proj_weight) : tensor<1x?x128xf32>
      %qlinear = qc.linear_razer4(%x, %codes, %scales, %meta) {group_size = 128, ...} : ...
      qc.return %linear_14 : tensor<1x?x512xf32>
    }

Value names are the fx node names (stable: torch.export names nodes deterministically, and our
passes derive new names from old ones), except that a name read from IR text prints as written:
fx renames a node that would shadow a Python builtin or is no identifier (`%pow` becomes the
node `pow_1`, `%0` becomes `_0`), so the parser keeps the written name in `node.meta[IR_NAME]`
and print → parse → print is the identity (`value_names`). Dynamic sizes print as `?`. Tensors
are never printed, only their types; keyword arguments print as `{key = value}` attributes (this
is where the quantized ops carry format, group size and shape), a `qc` op's in the order its
definition (qcompiler/dialect/defs.py) lists them. A weight whose quantized values a calibration
pass already chose (a weight plan, qcompiler/weight_plan.py) carries `{plan = "razer4 g128 by
gptq"}` on its param line. We do not use PyTorch's own graph printing, whose format changes
between releases.

The text parses back (qcompiler/ir/io.py; grammar in docs/CONTRACTS.md): strings are JSON
strings, the header comments name the tensors file (`tensors=`) and which `?` is which symbol
(`// dims: input_ids.1=seq:2..4096`), so every constant and type reads back as itself.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch
import torch.fx as fx

from qcompiler.dialect.registry import attr_order
from qcompiler.ir.meta import infer_node_meta

IR_NAME = "ir_name"  # node.meta key: the value's name as the IR text wrote it, when fx renamed it

DTYPES = {
    torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
    torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
    torch.uint8: "ui8", torch.bool: "i1", torch.float8_e4m3fn: "f8E4M3FN",
    torch.float8_e5m2: "f8E5M2",
}


def print_program(program: Any, tensors: str | None = None) -> str:
    """The whole program as text (a `Program`, or a bare GraphModule); `tensors` names the
    safetensors file that holds its tensors (qcompiler/ir/store.py), for the header."""
    gm = program.gm if hasattr(program, "gm") else program
    graph: fx.Graph = gm.graph
    names = value_names(graph)
    lines: list[str] = []
    source = getattr(program, "source", "")
    kind = getattr(program, "kind", "module")
    header = f"// qcompiler IR: source={_header_value(source or '<module>')} kind={kind}"
    lines.append(header + (f" tensors={_header_value(tensors)}" if tensors else ""))
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    dims = [f"{names[placeholders[d.input_index]]}.{d.dim}={d.name}:{d.min}..{d.max}"
            for d in getattr(program, "dynamic_dims", []) if d.input_index < len(placeholders)]
    if dims:
        lines.append("// dims: " + " ".join(dims))
    for entry in (getattr(program, "meta", {}) or {}).get("quantize_report", []):
        lines.append("// " + entry)
    output = next(n for n in graph.nodes if n.op == "output")
    sig_in = ", ".join(f"%{names[n]}: {type_str(n)}" for n in placeholders)
    sig_out = _result_types(output.args[0])
    lines.append(f"qc.func @main({sig_in}) -> {sig_out} {{")
    for node in graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            lines.append(f"  qc.return {_operand(output.args[0], names)} : {sig_out}")
        elif node.op == "get_attr" and isinstance(_attr(gm, str(node.target)), fx.GraphModule):
            lines += _region_lines(names[node], str(node.target), _attr(gm, str(node.target)))
        elif node.op == "get_attr":
            lines.append(f'  %{names[node]} = qc.param {attr_str(str(node.target))} : '
                         f'{type_str(node)}' + _plan_attr(program, str(node.target)))
        else:
            lines.append(_op_line(node, names))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _attr(gm: Any, target: str) -> Any:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


def _region_lines(name: str, target: str, sub: fx.GraphModule) -> list[str]:
    """A graph held as an attribute (the runtime's routed MoE experts, qcompiler/
    routed_experts.py) printed as a region: its arguments, its ops, what it yields. For reading
    only: the text parser does not read regions back (no artifact stores one)."""
    names = value_names(sub.graph)
    args = [n for n in sub.graph.nodes if n.op == "placeholder"]
    output = next(n for n in sub.graph.nodes if n.op == "output")
    sig = ", ".join(f"%{names[n]}: {type_str(n)}" for n in args)
    lines = [f"  %{name} = qc.region {attr_str(target)} ({sig}) {{"]
    for node in sub.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op == "get_attr":
            lines.append(f"    %{names[node]} = qc.param {attr_str(str(node.target))} : "
                         f"{type_str(node)}")
        else:
            lines.append("  " + _op_line(node, names))
    lines.append(f"    qc.yield {_operand(output.args[0], names)} : "
                 f"{_result_types(output.args[0])}")
    lines.append("  }")
    return lines


def value_names(graph: fx.Graph) -> dict[fx.Node, str]:
    """The printed name of every node, all distinct. A name the IR text gave a node
    (`meta[IR_NAME]`, set by the parser where fx renamed the node) is kept, the first node
    claiming it winning (a pass that copies a node's meta onto a second live node does not make
    two values share a name); every other node prints its fx name, with a `_N` suffix in the
    rare case that a kept IR name already took it."""
    names: dict[fx.Node, str] = {}
    taken: set[str] = set()
    for node in graph.nodes:
        wanted = node.meta.get(IR_NAME)
        if isinstance(wanted, str) and wanted not in taken:
            names[node] = wanted
            taken.add(wanted)
    fx_names = {n.name for n in graph.nodes}
    for node in graph.nodes:
        if node in names:
            continue
        name, k = node.name, 1
        while name in taken or (name != node.name and name in fx_names):
            name, k = f"{node.name}_{k}", k + 1
        names[node] = name
        taken.add(name)
    return names


def _header_value(v: str) -> str:
    """A header value: as is, or as a JSON string when it holds spaces or quotes."""
    return json.dumps(v) if not v or any(c in v for c in ' \t"\\') else v


def _plan_attr(program: Any, target: str) -> str:
    """` {plan = "razer4 g128 by gptq"}` on a weight whose quantized values a pass chose."""
    if not hasattr(program, "meta") or not (program.meta or {}).get("weight_plans"):
        return ""
    from qcompiler.weight_plan import describe, valid_plan

    layer = target.removesuffix(".weight")
    record = valid_plan(program, layer, target) if layer != target else None
    return f' {{plan = "{describe(record)}"}}' if record is not None else ""


def type_str(node: fx.Node) -> str:
    val = node.meta.get("val")
    if val is None and node.op in ("call_function", "get_attr"):
        try:
            val = infer_node_meta(node)
        except Exception:  # a type we cannot infer prints as unknown rather than failing
            val = None
    return val_type(val)


def val_type(val: Any) -> str:
    """The IR type of a node's `meta["val"]` (the parser compares re-derived types with it)."""
    if isinstance(val, torch.Tensor):
        dims = "x".join(str(d) if isinstance(d, int) else "?" for d in val.shape)
        dtype = DTYPES.get(val.dtype, str(val.dtype).removeprefix("torch."))
        return f"tensor<{dims}x{dtype}>" if dims else f"tensor<{dtype}>"
    if isinstance(val, (tuple, list)):
        return "(" + ", ".join(val_type(v) for v in val) + ")"
    if isinstance(val, torch.SymInt):
        return "index"
    if isinstance(val, bool):
        return "i1"
    if isinstance(val, int):
        return "index"
    if isinstance(val, float):
        return "f64"
    return "none" if val is None else "?"


def _op_line(node: fx.Node, names: dict[fx.Node, str]) -> str:
    name = _op_name(node)
    args = ", ".join(_operand(a, names) for a in node.args)
    attrs = ""
    if node.kwargs:
        keys = attr_order(node.target, dict(node.kwargs))  # a qc op's: its definition's order
        attrs = " {" + ", ".join(f"{k} = {attr_str(node.kwargs[k], names)}" for k in keys) + "}"
    return f"  %{names[node]} = {name}({args}){attrs} : {type_str(node)}"


def _op_name(node: fx.Node) -> str:
    target = node.target
    if node.op == "call_module":
        return f"qc.call_module @{target}"
    if isinstance(target, torch._ops.OpOverload):
        ns, op = target.namespace, target._schema.name.split("::")[-1]
        overload = "" if target._overloadname == "default" else f".{target._overloadname}"
        return f"{ns}.{op}{overload}"
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"hop.{target.__name__}"
    module = getattr(target, "__module__", "") or ""
    if module.startswith("_operator") or module == "operator":
        return f"py.{target.__name__}"
    return f"py.{getattr(target, '__qualname__', str(target))}"


def _operand(a: Any, names: dict[fx.Node, str] | None = None) -> str:
    if isinstance(a, fx.Node):
        return f"%{names.get(a, a.name) if names else a.name}"
    if isinstance(a, (tuple, list)):
        return "[" + ", ".join(_operand(x, names) for x in a) + "]"
    return attr_str(a, names)


def attr_str(v: Any, names: dict[fx.Node, str] | None = None) -> str:
    """A constant as the IR writes it; the parser reads each form back as the same value.
    `names`: the printed name of each node (`value_names`), else its fx name."""
    if isinstance(v, fx.Node):
        return f"%{names.get(v, v.name) if names else v.name}"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(attr_str(x, names) for x in v) + "]"
    if isinstance(v, torch.dtype):
        return DTYPES.get(v, str(v).removeprefix("torch."))
    if isinstance(v, (torch.device, torch.memory_format, torch.layout)):
        return f"#{v}"
    if isinstance(v, torch.Tensor):
        return f"dense<...> : {val_type(v)}"
    if v is None:
        return "none"
    return str(v)


def _result_types(result: Any) -> str:
    if isinstance(result, fx.Node):
        return type_str(result)
    if isinstance(result, (tuple, list)):
        return "(" + ", ".join(_result_types(r) for r in result) + ")"
    return val_type(result)

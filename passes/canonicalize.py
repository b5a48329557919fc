"""`canonicalize`: one spelling for a linear layer, and no ops that do nothing.

Every later pass (rotation, GPTQ, lowering to a datatype) looks for `aten.linear(x, W[N,K], b)`
with a constant weight, so models that write `x @ W.t()`, `torch.mm`, `torch.addmm` or
`matmul(x, W_kn)` must be rewritten into that form first or they would silently stay
unquantized. A weight stored as [K, N] is transposed once into a new tensor named `<name>_t`.
Ops that are identities at inference (alias, clone, same-dtype casts and type_as, eval-mode dropout,
contiguous, same-shape reshapes, metadata asserts) are removed so patterns match across them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx as fx

from qcompiler.errors import PassError
from qcompiler.ir.meta import infer_node_meta
from qcompiler.pass_registry import register_pass
from qcompiler.passes.dce import eliminate_dead_code
from qcompiler.passes_base import Pass, PassContext, PassResult
from qcompiler.program import Program

aten = torch.ops.aten
KEEP_META = ("stack_trace", "nn_module_stack", "source_fn_stack", "torch_fn")
DROPOUTS = (aten.dropout.default, aten.feature_dropout.default, aten.alpha_dropout.default)
RESHAPES = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)
CASTS = (aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten.to.other,
         aten._to_copy.default)
TRANSPOSES = (aten.t.default, aten.numpy_T.default, aten.permute.default, aten.transpose.int)
PRESERVE = (None, torch.preserve_format)


# ---- no-ops ------------------------------------------------------------------------------------
def _val(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def _same_shape(a: Any, b: Any) -> bool:
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.dim() != b.dim():
        return False
    for x, y in zip(a.shape, b.shape, strict=True):
        if isinstance(x, int) and isinstance(y, int):
            if x != y:
                return False
        elif not statically_known_true(x == y):
            return False
    return True


def _same_tensor_type(a: Any, b: Any) -> bool:
    return (_same_shape(a, b) and a.dtype == b.dtype and a.device == b.device
            and a.layout == b.layout)


def _is_no_op(node: fx.Node) -> bool:
    """Whether `node` returns its first operand unchanged (values, dtype, device, shape)."""
    t, args, kwargs = node.target, node.args, node.kwargs
    if not args or not isinstance(args[0], fx.Node):
        return False
    if t in (aten.alias.default, aten.detach.default, aten.contiguous.default):
        return True
    if t is aten.clone.default:
        return kwargs.get("memory_format") in PRESERVE
    if t in DROPOUTS:
        p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
        train = args[2] if len(args) > 2 else kwargs.get("train", True)
        return train is False or p == 0
    if t is aten.type_as.default:
        return _same_tensor_type(_val(args[0]), _val(node))
    if t in CASTS:
        formats = [a for a in args if isinstance(a, torch.memory_format)]
        formats.append(kwargs.get("memory_format"))
        return (all(f in PRESERVE for f in formats)
                and _same_tensor_type(_val(args[0]), _val(node)))
    if t in RESHAPES:
        return _same_shape(_val(args[0]), _val(node))
    return False


def remove_no_ops(graph: fx.Graph) -> int:
    removed = 0
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is aten._assert_tensor_metadata.default and not node.users:
            graph.erase_node(node)
            removed += 1
        elif _is_no_op(node):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            removed += 1
    return removed


def first_no_op(program: Program) -> fx.Node | None:
    """The first node `canonicalize` would remove, or None when the graph has none."""
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        if (node.target is aten._assert_tensor_metadata.default and not node.users) or (
                _is_no_op(node)):
            return node
    return None


def require_canonical(program: Program, pass_name: str, pipeline: str) -> None:
    """A pass that matches norms and linears structurally (fold-norms, rotate) sees casts,
    aliases and metadata asserts as real uses, so on an uncanonicalized graph it would fold
    nothing or blame the model ("no LM head"). Say which step is missing instead."""
    node = first_no_op(program)
    if node is None:
        return
    op = getattr(node.target, "__name__", str(node.target)).split(".")[0]
    raise PassError(pass_name, f"run canonicalize first (-p '{pipeline}'): the graph still has "
                    f"ops that canonicalize removes (%{node.name}, {op}), which hide the norms "
                    "and linears this pass rewrites")


# ---- matmuls with constant weights -> linear ---------------------------------------------------
def _is_2d_transpose(node: fx.Node) -> bool:
    if node.target in (aten.t.default, aten.numpy_T.default):
        return True
    if node.target is aten.permute.default:
        return list(node.args[1]) == [1, 0]
    if node.target is aten.transpose.int:
        return {d % 2 for d in node.args[1:3]} == {0, 1}
    return False


class _Linearizer:
    """Finds the [N, K] weight behind the right-hand operand B[K, N] of a matmul.

    A [K, N] tensor used only as such an operand is transposed in place and keeps its name (so
    GPT-2's Conv1D weights stay `...c_attn.weight`); one used elsewhere too gets a `_t` copy.
    """

    def __init__(self, program: Program):
        self.program = program
        self.transposed: dict[str, fx.Node | None] = {}  # target -> its `_t` copy, None: in place
        self.only_b = _only_b_operand(program.graph)

    def weight_for(self, b: Any) -> fx.Node | None:
        if not isinstance(b, fx.Node):
            return None
        if b.op == "call_function" and b.target in TRANSPOSES:
            w = b.args[0]
            if _is_constant_2d(w) and _is_2d_transpose(b):
                return w  # B = W^T, so W is already [N, K]
            return None
        if _is_constant_2d(b):
            return self._transpose(b)
        return None

    def _transpose(self, b: fx.Node) -> fx.Node:
        target, program = str(b.target), self.program
        if target in self.transposed:
            return self.transposed[target] or b
        value = program.get_tensor(target)
        if target in self.only_b:
            program.set_tensor(target, value.t().contiguous())  # keeps parameter-ness
            for node in program.graph.find_nodes(op="get_attr", target=target):
                node.meta.pop("val", None)
                infer_node_meta(node)
            self.transposed[target] = None
            return b
        name = program.add_tensor(f"{target}_t", value.t().contiguous())
        if isinstance(value, torch.nn.Parameter):
            owner, attr = program.owner_of(name)
            owner._parameters[attr] = torch.nn.Parameter(owner._buffers.pop(attr),
                                                         requires_grad=False)
        with program.graph.inserting_after(b):
            node = program.graph.create_node("get_attr", name, name=name.replace(".", "_"))
        infer_node_meta(node)
        self.transposed[target] = node
        return node


def _only_b_operand(graph: fx.Graph) -> set[str]:
    """Targets whose every get_attr is used only as the B operand of a linearizable matmul."""
    ok: dict[str, bool] = {}
    for node in graph.find_nodes(op="get_attr"):
        uses = [_match(u) if u.op == "call_function" else None for u in node.users]
        good = bool(uses) and all(
            m is not None and m[1] is node and m[0] is not node and m[2] is not node for m in uses)
        ok[str(node.target)] = ok.get(str(node.target), True) and good
    return {t for t, good in ok.items() if good}


def _is_constant_2d(node: Any) -> bool:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return False
    val = _val(node)
    if val is None:  # a graph without shape annotations: look at the tensor itself
        val = node.graph.owning_module
        for part in str(node.target).split("."):
            val = getattr(val, part, None)
    return isinstance(val, torch.Tensor) and val.dim() == 2


def _match(node: fx.Node) -> tuple[Any, Any, Any] | None:
    """(x, B, bias) when `node` computes x @ B (+ bias) in a form linear can express."""
    if node.target is aten.mm.default or node.target is aten.matmul.default:
        x, b = node.args[:2]
        x_val = _val(x)
        if node.target is aten.matmul.default and (x_val is None or x_val.dim() < 1):
            return None
        return x, b, None
    if node.target is aten.addmm.default:
        bias, x, b = node.args[:3]
        if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
            return None
        bias_val = _val(bias)
        if bias_val is None or bias_val.dim() != 1:
            return None
        return x, b, bias
    return None


def linearize(program: Program) -> int:
    graph, linearizer, created = program.graph, _Linearizer(program), 0
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        matched = _match(node)
        if matched is None:
            continue
        x, b, bias = matched
        weight = linearizer.weight_for(b)
        if weight is None:
            continue
        args = (x, weight) if bias is None else (x, weight, bias)
        _replace(node, lambda g, args=args: g.create_node(
            "call_function", aten.linear.default, args, name="linear"))
        created += 1
    return created


def _replace(old: fx.Node, build: Callable[[fx.Graph], fx.Node]) -> fx.Node:
    """Insert the node `build` makes before `old`, carry the allow-listed meta, swap uses."""
    graph = old.graph
    with graph.inserting_before(old):
        new = build(graph)
    for key in KEEP_META:
        if key in old.meta:
            new.meta[key] = old.meta[key]
    infer_node_meta(new)
    old.replace_all_uses_with(new)
    graph.erase_node(old)
    return new


@register_pass
@dataclass(frozen=True)
class Canonicalize(Pass):
    """Rewrite matmuls with constant weights into aten.linear and drop no-op ops."""

    name = "canonicalize"

    def apply(self, program: Program, ctx: PassContext) -> PassResult:
        no_ops = remove_no_ops(program.graph)
        linears = linearize(program)
        dead, _ = eliminate_dead_code(program)
        stats = {"linears-created": linears, "no-ops-removed": no_ops}
        return PassResult(bool(no_ops or linears or dead), stats)

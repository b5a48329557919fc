"""Build a `Program` from parsed IR: an fx graph with the same ops, names and types.

Every op name resolves back to its torch callable (`aten.add.Tensor` -> torch.ops.aten.add.Tensor,
`qc.linear_razer4` -> the registered qc op, `py.getitem` -> operator.getitem). Node types are not
trusted from the text: each node's `meta["val"]` is re-derived by running the op on fake tensors
whose dynamic sizes are shared symbols (one per dimension name in the `// dims:` header), exactly
as torch.export annotated the original, and the result must print as the type the text states.
Later passes then see the same kind of program that capture produces.
"""

from __future__ import annotations

import builtins
import math
import operator
import re
from typing import Any

import torch
import torch.fx as fx

from qcompiler.dialect.registry import check_call, definition_of
from qcompiler.ir.lexer import IRParseError, Token
from qcompiler.ir.parser import Func, Ref, Stmt, parse_tensor_type
from qcompiler.ir.printer import IR_NAME, val_type
from qcompiler.program import DynamicDim, Program

DEFAULT_RANGE = (2, 4096)
INIT_ATTRS = ("value", "random")  # a param's inline value or seeded random init (hand-written IR)


# What a parsed program may call. Reading a .qcir runs no code, and neither may running the program
# it describes: only tensor ops of these namespaces (minus the ones that touch files), pure
# operators and math functions, and a few value builtins.
PARAM_PART = re.compile(r"(?!__)[A-Za-z0-9_]+")
OP_NAMESPACES = frozenset({"aten", "prims", "qc"})
IO_OPS = frozenset({"from_file", "_from_file"})
PY_OPERATORS = frozenset({
    "getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs",
    "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor", "invert", "not_", "truth",
    "lshift", "rshift", "matmul", "index"})
PY_BUILTINS = frozenset({"int", "float", "bool", "min", "max", "abs", "round", "len", "sum"})


def resolve_op(name: str) -> Any:
    """The torch callable an IR op name stands for; None if there is none (the qc ops are
    registered by importing qcompiler.dialect.registry, above)."""
    ns, _, rest = name.partition(".")
    if ns == "py":  # an allowlist: a .qcir file must not reach exec, open or attrgetter
        if rest in PY_OPERATORS:
            return getattr(operator, rest)
        if rest in PY_BUILTINS:
            return getattr(builtins, rest)
        fn = getattr(math, rest, None)
        return fn if callable(fn) else None
    if ns == "hop":
        return getattr(torch.ops.higher_order, rest, None)
    op, _, overload = rest.partition(".")
    if ns not in OP_NAMESPACES or op in IO_OPS:
        return None
    try:
        packet = getattr(getattr(torch.ops, ns), op)
        return getattr(packet, overload or "default")
    except (AttributeError, RuntimeError):
        return None


class Builder:
    def __init__(self, func: Func, header: dict[str, str], tensors: dict[str, torch.Tensor],
                 inputs: dict[int, torch.Tensor], filename: str,
                 parameters: set[str] | None = None):
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.experimental.symbolic_shapes import ShapeEnv

        self.func, self.header, self.tensors, self.inputs = func, header, tensors, inputs
        self.filename, self.parameters = filename, parameters
        self.mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
        self.graph = fx.Graph()
        self.values: dict[str, fx.Node] = {}
        self.symbols: dict[str, Any] = {}
        # tied weights stay one object; the key's tensor is kept alive so its id is not reused
        self._wrapped: dict[int, tuple[torch.Tensor, torch.nn.Parameter]] = {}

    def error(self, tok: Token, message: str) -> IRParseError:
        return IRParseError(f"{self.filename}:{tok.line}:{tok.col}: {message}")

    # ---- the function's arguments ----------------------------------------------------------
    def dynamic_dims(self) -> list[DynamicDim]:
        """From `// dims: ARG.DIM=NAME:MIN..MAX`; a `?` the header does not name gets its own."""
        dims: list[DynamicDim] = []
        for i, arg in enumerate(self.func.args):
            shape = self._arg_shape(arg)[0]
            for d, size in enumerate(shape):
                spec = self.header.get(f"dim:{arg.name}.{d}")
                if spec is None and size is not None:
                    continue
                if spec is None:
                    spec = f"{arg.name}_{d}"
                name, _, bounds = spec.partition(":")
                lo, _, hi = bounds.partition("..")
                try:
                    lo_hi = (int(lo), int(hi)) if bounds else DEFAULT_RANGE
                except ValueError:
                    raise self.error(arg.token, f"bad dims entry {spec!r} for %{arg.name}, "
                                                "expected NAME:MIN..MAX") from None
                dims.append(DynamicDim(i, d, name, *lo_hi))
        return dims

    def _arg_shape(self, arg: Any) -> tuple[list[int | None], torch.dtype]:
        if not arg.type.startswith("tensor<"):
            raise self.error(arg.token, f"argument %{arg.name} must be a tensor, not {arg.type}")
        try:
            return parse_tensor_type(arg.type)
        except ValueError as e:
            raise self.error(arg.token, str(e)) from None

    def example_inputs(self, dims: list[DynamicDim]) -> tuple[torch.Tensor, ...]:
        """The stored inputs, else seeded ones: dynamic sizes get distinct small hints."""
        hints: dict[str, int] = {}
        for d in dims:
            hints.setdefault(d.name, max(d.min, min(d.max, 3 + 2 * len(hints))))
        out = []
        gen = torch.Generator().manual_seed(0)
        for i, arg in enumerate(self.func.args):
            if i in self.inputs:
                out.append(self.inputs[i])
                continue
            shape, dtype = self._arg_shape(arg)
            named = {d.dim: hints[d.name] for d in dims if d.input_index == i}
            sizes = [named.get(j, s if s is not None else 1) for j, s in enumerate(shape)]
            if dtype.is_floating_point:
                out.append(torch.randn(sizes, generator=gen).to(dtype))
            else:
                out.append(torch.zeros(sizes, dtype=dtype))
        return tuple(out)

    def _symbol(self, d: DynamicDim, hint: int) -> Any:
        if d.name not in self.symbols:
            from torch._dynamo.source import ConstantSource
            from torch.fx.experimental.symbolic_shapes import DimDynamic, StrictMinMaxConstraint
            from torch.utils._sympy.value_ranges import ValueRanges

            env, source = self.mode.shape_env, ConstantSource(d.name)
            constraint = StrictMinMaxConstraint(warn_only=False, vr=ValueRanges(d.min, d.max))
            sym = env.create_symbol(hint, source, DimDynamic.DYNAMIC, constraint_dim=constraint)
            self.symbols[d.name] = env.create_symintnode(sym, hint=hint, source=source)
        return self.symbols[d.name]

    # ---- the body --------------------------------------------------------------------------
    def build(self, header_kind: str, source: str, meta: dict[str, Any]) -> Program:
        dims = self.dynamic_dims()
        examples = self.example_inputs(dims)
        for i, arg in enumerate(self.func.args):
            node = self.graph.placeholder(arg.name)
            sizes: list[Any] = list(examples[i].shape)
            for d in dims:
                if d.input_index == i:
                    sizes[d.dim] = self._symbol(d, int(examples[i].shape[d.dim]))
            with self.mode:
                node.meta["val"] = torch.empty(sizes, dtype=examples[i].dtype)
            self._define(arg.name, node, arg.token)
            self._check_type(node, arg.type, arg.token)
        root = torch.nn.Module()
        for stmt in self.func.body:
            if stmt.op == "qc.return":
                out = self._operand(stmt.args[0])
                self.graph.output(tuple(out) if isinstance(out, list) else out)
                self._check_result_type(out, stmt)
            elif stmt.op == "qc.param":
                self._param(stmt, root)
            else:
                self._call(stmt)
        gm = fx.GraphModule(root, self.graph)
        names = tuple(a.name for a in self.func.args)
        kind = header_kind if header_kind in ("causal-lm", "encoder", "module") else "module"
        return Program(gm, examples, names, dims, kind, source, meta)  # type: ignore[arg-type]

    def _define(self, name: str, node: fx.Node, tok: Token) -> None:
        if name in self.values:
            raise self.error(tok, f"%{name} is defined twice")
        self.values[name] = node
        if node.name != name:  # fx renamed it (a builtin like `pow`, or no identifier): keep ours
            node.meta[IR_NAME] = name

    def _param(self, stmt: Stmt, root: torch.nn.Module) -> None:
        from qcompiler.ir.inline import init_value

        target = str(stmt.target)
        value = self.tensors.get(target)
        if any(k in stmt.kwargs for k in INIT_ATTRS):
            try:
                value = init_value(stmt.type, stmt.kwargs)
            except ValueError as e:
                raise self.error(stmt.token, f"qc.param {target!r}: {e}") from None
        if value is None:
            raise self.error(stmt.token, f"no tensor {target!r}: give the tensors file in the "
                                         "header (tensors=FILE) or an inline {value = ...} / "
                                         "{random = SEED}")
        unknown = set(stmt.kwargs) - set(INIT_ATTRS) - {"plan"}
        if unknown:
            raise self.error(stmt.token, f"unknown qc.param attribute {sorted(unknown)[0]!r}")
        if not all(PARAM_PART.fullmatch(part) for part in target.split(".")):
            raise self.error(stmt.token, f"qc.param {target!r}: a parameter name is dotted "
                                         "words of letters, digits and '_', not starting '__'")
        _set_tensor(root, target, value, self.parameters is None or target in self.parameters,
                    self._wrapped)
        node = self.graph.create_node("get_attr", target, name=stmt.result)
        node.meta["val"] = self.mode.from_tensor(value, static_shapes=True)
        self._define(str(stmt.result), node, stmt.token)
        self._check_type(node, stmt.type, stmt.token)

    def _call(self, stmt: Stmt) -> None:
        target = resolve_op(stmt.op)
        if target is None:
            raise self.error(stmt.token, f"unknown op {stmt.op!r}")
        args = tuple(self._operand(a) for a in stmt.args)
        kwargs = {k: self._operand(v) for k, v in stmt.kwargs.items()}
        node = self.graph.create_node("call_function", target, args, kwargs, name=stmt.result)
        vals = fx.node.map_arg((args, kwargs), lambda n: n.meta.get("val"))
        d = definition_of(target)  # a qc op: its definition's checks, before running it
        problems = check_call(d, vals[0], vals[1]) if d is not None else []
        if problems:
            raise self.error(stmt.token, f"{stmt.op} {problems[0]}")
        try:
            with self.mode:
                node.meta["val"] = target(*vals[0], **vals[1])
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise self.error(stmt.token, f"{stmt.op} does not accept these operands: "
                                         f"{type(e).__name__}: {first}") from None
        self._define(str(stmt.result), node, stmt.token)
        self._check_type(node, stmt.type, stmt.token)

    def _operand(self, a: Any) -> Any:
        if isinstance(a, Ref):
            if a.name not in self.values:
                raise self.error(a.token, f"use of undefined value %{a.name}")
            return self.values[a.name]
        if isinstance(a, list):
            return [self._operand(x) for x in a]
        return a

    def _check_type(self, node: fx.Node, stated: str, tok: Token) -> None:
        derived = val_type(node.meta.get("val"))
        if derived != stated:
            raise self.error(tok, f"%{node.name} has type {derived}, but the IR says {stated}")

    def _check_result_type(self, out: Any, stmt: Stmt) -> None:
        def typ(v: Any) -> str:
            if isinstance(v, fx.Node):
                return val_type(v.meta.get("val"))
            if isinstance(v, (list, tuple)):
                return "(" + ", ".join(typ(x) for x in v) + ")"
            return val_type(v)

        for stated in (stmt.type, self.func.result_type):
            if typ(out) != stated:
                raise self.error(stmt.token, f"the result has type {typ(out)}, but the IR "
                                             f"says {stated}")


def _set_tensor(root: torch.nn.Module, name: str, value: torch.Tensor, parameter: bool,
                wrapped: dict[int, tuple[torch.Tensor, torch.nn.Parameter]]) -> None:
    *path, attr = name.split(".")
    mod = root
    for part in path:
        if not hasattr(mod, part):
            mod.add_module(part, torch.nn.Module())
        mod = getattr(mod, part)
    if parameter and value.is_floating_point():
        if id(value) not in wrapped:
            wrapped[id(value)] = (value, torch.nn.Parameter(value, requires_grad=False))
        mod.register_parameter(attr, wrapped[id(value)][1])
    else:
        mod.register_buffer(attr, value)

"""The vocabulary of op definitions: operands, attributes, shape rules, and their checks.

An `OpDef` says everything the rest of the compiler needs to know about a `qc` op, once: its
operands (tensor or optional tensor, element type, shape as dimension expressions), its
keyword attributes (type, default, allowed values, conditions), its result (shape and element
type, from an operand), and extra conditions between them. From it come the torch.library
schema (`schema()`), the fake implementation (`fake_result`), and the checks that the verifier
and the IR parser run (`check`), so the three cannot drift apart.

Dimension expressions are tiny arithmetic over names: `n`, `k*bits/8`, `k/group_size`, `1`;
`...` stands for any number of leading dimensions. A name that is neither an attribute nor a
fact of the op (like `bits`) is bound by its first occurrence and must agree at the others.
Division must be exact: `k/group_size` with k = 100, group_size = 32 is a problem, not 3.
Symbolic sizes (dynamic batch and sequence) are never checked: only concrete ints are.
Conditions may also call a predicate fact: `has_hadamard(d)`.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

REQUIRED = object()  # an attribute without a default
UNKNOWN = object()  # an operand value nobody recorded (no meta["val"]): presence is all we check
DTYPE_NAMES = {
    torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
    torch.uint8: "ui8", torch.int8: "i8", torch.int32: "i32", torch.int64: "i64", torch.bool: "i1",
}
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Mod: operator.mod}
_CMPOPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Gt: operator.gt,
           ast.GtE: operator.ge, ast.Lt: operator.lt, ast.LtE: operator.le}


@dataclass(frozen=True)
class Operand:
    """A tensor operand. `shape` None: any shape. `when`: for an optional operand, the name of
    a boolean fact saying whether it must be given (True) or must be none (False)."""

    name: str
    shape: tuple[str, ...] | None = None
    dtype: str | None = None  # an element type name (ui8, f32) or a fact naming one
    optional: bool = False
    when: str | None = None
    doc: str = ""


@dataclass(frozen=True)
class Attr:
    """A keyword attribute: `type` is the schema type (int, str, bool)."""

    name: str
    type: str
    default: Any = REQUIRED
    choices: tuple[Any, ...] | None = None
    doc: str = ""


@dataclass(frozen=True)
class OpDef:
    """One `qc` op. `result`: (operand it is like, shape or None for the operand's shape)."""

    name: str
    summary: str
    operands: tuple[Operand, ...]
    attrs: tuple[Attr, ...]
    result: tuple[str, tuple[str, ...] | None]
    conditions: tuple[str, ...] = ()  # boolean expressions over attributes, facts and dims
    impl: Callable[..., torch.Tensor] | None = field(default=None, compare=False)

    def schema(self) -> str:
        """The torch.library schema, e.g. `(Tensor x, *, int group_size) -> Tensor`."""
        parts = [f"Tensor{'?' if o.optional else ''} {o.name}" for o in self.operands]
        if self.attrs:
            parts.append("*")
        for a in self.attrs:
            default = "" if a.default is REQUIRED else f"={_schema_default(a.default)}"
            parts.append(f"{a.type} {a.name}{default}")
        return f"({', '.join(parts)}) -> Tensor"

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Operand and attribute values by name (defaults filled in), as the schema binds."""
        values = {o.name: (args[i] if i < len(args) else None)
                  for i, o in enumerate(self.operands)}
        for a in self.attrs:
            values[a.name] = kwargs.get(a.name, None if a.default is REQUIRED else a.default)
        return values

    def fake_result(self, values: dict[str, Any]) -> torch.Tensor:
        """The result's fake tensor: like operand `result[0]`, with the declared shape."""
        like, dims = self.result
        x = values[like]
        if dims is None:
            return torch.empty_like(x)
        tail = [evaluate(d, values) for d in dims if d != "..."]
        return x.new_empty((*x.shape[:x.dim() - len(tail)], *tail))

    def check(self, args: tuple[Any, ...], kwargs: dict[str, Any],
              facts: dict[str, Any]) -> list[str]:
        """Problems with a call: `args` are operand values (tensors, fake tensors or None)."""
        problems = [f"has unknown attribute '{k}'" for k in kwargs
                    if k not in {a.name for a in self.attrs}]
        if len(args) != len(self.operands):
            problems.append(f"has {len(args)} operands, expected {len(self.operands)} "
                            f"({', '.join(o.name for o in self.operands)})")
            return problems
        env: dict[str, Any] = dict(facts)
        for a in self.attrs:
            problems += _check_attr(a, kwargs, env)
        for o, value in zip(self.operands, args):
            problems += _check_operand(o, value, env)
        for cond in self.conditions:
            try:
                ok = evaluate(cond, env)
            except (KeyError, TypeError, ArithmeticError):
                continue  # needs a missing or symbolic value: reported elsewhere, or uncheckable
            if not ok:
                problems.append(f"violates {cond} ({_bindings(cond, env)})")
        return problems


def _schema_default(v: Any) -> str:
    if isinstance(v, str):
        return '"' + v + '"'
    return str(v)


def _check_attr(a: Attr, kwargs: dict[str, Any], env: dict[str, Any]) -> list[str]:
    if a.name not in kwargs:
        if a.default is REQUIRED:
            return [f"is missing attribute '{a.name}'"]
        env[a.name] = a.default
        return []
    v = kwargs[a.name]
    kind = {"int": int, "str": str, "bool": bool}[a.type]
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        return [f"has {a.name}={v!r}, expected {a.type}"]
    env[a.name] = v
    if a.choices is not None and v not in a.choices:
        return [f"has {a.name}={v!r}, expected one of {', '.join(map(str, a.choices))}"]
    return []


def _check_operand(o: Operand, value: Any, env: dict[str, Any]) -> list[str]:
    required = not o.optional or (o.when is not None and bool(env.get(o.when)))
    if value is None:
        return [f"is missing operand {o.name}"] if required else []
    if o.when is not None and not env.get(o.when, True):
        return [f"has operand {o.name}, which its format does not store (expected none)"]
    if value is UNKNOWN:
        return []
    if not isinstance(value, torch.Tensor):
        return [f"operand {o.name} is {type(value).__name__}, expected a tensor"]
    problems = []
    want = env.get(o.dtype, o.dtype) if o.dtype else None
    if isinstance(want, torch.dtype):
        want = DTYPE_NAMES.get(want, str(want))
    have = DTYPE_NAMES.get(value.dtype, str(value.dtype))
    if want is not None and have != want:
        problems.append(f"operand {o.name} has element type {have}, expected {want}")
    if o.shape is not None:
        problems += _check_shape(o, list(value.shape), env)
    return problems


def _check_shape(o: Operand, shape: list[Any], env: dict[str, Any]) -> list[str]:
    dims = [d for d in o.shape if d != "..."]  # type: ignore[union-attr]
    variadic = "..." in o.shape  # type: ignore[operator]
    shown = "[" + ", ".join(str(d) if isinstance(d, int) else "?" for d in shape) + "]"
    spec = "[" + ", ".join(o.shape) + "]"  # type: ignore[arg-type]
    if len(shape) < len(dims) or (not variadic and len(shape) != len(dims)):
        return [f"operand {o.name} has shape {shown}, expected {spec}"]
    actual = shape[len(shape) - len(dims):]
    expected: list[Any] = []
    for expr, size in zip(dims, actual):
        if expr.isidentifier() and expr not in env and isinstance(size, int):
            env[expr] = size  # first occurrence binds the name
        try:
            expected.append(evaluate(expr, env))
        except (KeyError, TypeError):
            expected.append(None)  # depends on a symbolic or missing size: not checkable
        except ArithmeticError as e:
            return [f"operand {o.name}: {expr} is not a whole number ({e})"]
    if any(isinstance(s, int) and isinstance(e, int) and s != e for s, e in zip(actual, expected)):
        lead = "..., " if variadic else ""
        want = "[" + lead + ", ".join(str(e) for e in expected) + "]"
        return [f"operand {o.name} has shape {shown}, expected {spec} = {want}"]
    return []


def evaluate(expr: str, env: dict[str, Any]) -> Any:
    """Evaluate a dimension expression or condition over `env` (ints, bools, strings).
    `a/b` is exact integer division (ArithmeticError if b does not divide a)."""
    return _eval(ast.parse(expr, mode="eval").body, env)


def _eval(node: ast.AST, env: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        fn = env[node.func.id]  # a predicate fact, like has_hadamard
        if not callable(fn):
            raise TypeError(f"{node.func.id} is not a predicate")
        return bool(fn(*(_eval(a, env) for a in node.args)))
    if isinstance(node, ast.Name):
        value = env[node.id]
        if not isinstance(value, (int, str, bool)):
            raise TypeError(f"{node.id} is not a concrete value")
        return value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        a, b = _eval(node.left, env), _eval(node.right, env)
        if b == 0 or a % b:
            raise ArithmeticError(f"{a} is not a multiple of {b}")
        return a // b
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_eval(node.left, env), _eval(node.right, env))
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMPOPS:
        return _CMPOPS[type(node.ops[0])](_eval(node.left, env), _eval(node.comparators[0], env))
    if isinstance(node, ast.BoolOp):
        values = [_eval(v, env) for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    raise ValueError(f"unsupported expression {ast.unparse(node)!r}")


def _bindings(expr: str, env: dict[str, Any]) -> str:
    names = sorted({n.id for n in ast.walk(ast.parse(expr, mode="eval"))
                    if isinstance(n, ast.Name) and n.id in env and not callable(env[n.id])})
    return ", ".join(f"{n}={env[n]}" for n in names)

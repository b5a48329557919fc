"""Parse the textual IR (what qcompiler/ir/printer.py prints) into a syntax tree.

    func    := 'qc.func' '@'NAME '(' [arg (',' arg)*] ')' '->' type '{' stmt* '}'
    arg     := VALUE ':' type
    stmt    := VALUE '=' 'qc.param' STRING ':' type [attrs]
             | VALUE '=' OPNAME '(' [operand (',' operand)*] ')' [attrs] ':' type
             | 'qc.return' operand ':' type
    attrs   := '{' KEY '=' operand (',' KEY '=' operand)* '}'
    operand := VALUE | '[' [operand (',' operand)*] ']' | INT | FLOAT | STRING | true | false
             | none | DTYPE (f32, i64, ...) | '#'DEVICE_OR_LAYOUT
    type    := 'tensor<' DIMS 'x' DTYPE '>' | index | i1 | f64 | none | '?' | '(' type, ... ')'

Operands become Python values here (dtypes, devices, layouts); `%x` becomes a `Ref` that
qcompiler/ir/build.py resolves to the fx node defined earlier. Types stay text: the builder
re-derives every value's type and compares it with what the text says.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from qcompiler.ir.lexer import IRParseError, Token, tokenize
from qcompiler.ir.printer import DTYPES

_DTYPE_BY_NAME = {v: k for k, v in DTYPES.items()}
_KEYWORDS = {"true": True, "false": False, "none": None, "inf": math.inf, "nan": math.nan}


@dataclass(frozen=True)
class Ref:
    """A use of the value `%name`."""

    name: str
    token: Token


@dataclass
class Arg:
    name: str
    type: str
    token: Token


@dataclass
class Stmt:
    """One line of the body: an op (`op` is its name), a `qc.param`, or the `qc.return`."""

    op: str
    token: Token
    result: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    type: str = ""
    target: str | None = None  # qc.param: the tensor's dotted name


@dataclass
class Func:
    name: str
    args: list[Arg]
    result_type: str
    body: list[Stmt]


class Parser:
    def __init__(self, text: str, filename: str = "<ir>"):
        self.filename = filename
        self.tokens = tokenize(text, filename)
        self.pos = 0

    # ---- token helpers ---------------------------------------------------------------------
    def peek(self) -> Token:
        return self.tokens[self.pos]

    def next(self) -> Token:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def error(self, tok: Token, message: str) -> IRParseError:
        return IRParseError(f"{self.filename}:{tok.line}:{tok.col}: {message}")

    def expect(self, text: str) -> Token:
        tok = self.next()
        if tok.text != text or tok.kind == "string":
            found = "end of file" if tok.kind == "eof" else repr(tok.text)
            raise self.error(tok, f"expected {text!r}, found {found}")
        return tok

    def expect_kind(self, kind: str, what: str) -> Token:
        tok = self.next()
        if tok.kind != kind:
            found = "end of file" if tok.kind == "eof" else repr(tok.text)
            raise self.error(tok, f"expected {what}, found {found}")
        return tok

    def accept(self, text: str) -> bool:
        tok = self.peek()
        if tok.text == text and tok.kind in ("punct", "ident"):
            self.pos += 1
            return True
        return False

    # ---- grammar ---------------------------------------------------------------------------
    def parse_func(self) -> Func:
        self.expect("qc.func")
        name = self.expect_kind("symbol", "a function name like @main").text[1:]
        self.expect("(")
        args: list[Arg] = []
        while not self.accept(")"):
            if args:
                self.expect(",")
            tok = self.expect_kind("value", "an argument like %input_ids")
            self.expect(":")
            args.append(Arg(tok.text[1:], self.parse_type(), tok))
        self.expect("->")
        result_type = self.parse_type()
        self.expect("{")
        body: list[Stmt] = []
        close = self.peek()
        while not self.accept("}"):
            body.append(self.parse_stmt())
            close = self.peek()
            if body[-1].op == "qc.return" and close.text != "}":
                raise self.error(close, "qc.return must be the last statement of the function")
        if not body or body[-1].op != "qc.return":
            raise self.error(close, f"@{name} has no qc.return")
        end = self.peek()
        if end.kind != "eof":
            raise self.error(end, f"unexpected {end.text!r} after the end of @{name}")
        return Func(name, args, result_type, body)

    def parse_stmt(self) -> Stmt:
        tok = self.peek()
        if tok.text == "qc.return":
            self.next()
            operand = self.parse_operand()
            self.expect(":")
            return Stmt("qc.return", tok, args=[operand], type=self.parse_type())
        if tok.kind != "value":
            found = "end of file" if tok.kind == "eof" else repr(tok.text)
            raise self.error(tok, f"expected a statement like `%x = op(...) : type`, found {found}")
        self.next()
        self.expect("=")
        op_tok = self.expect_kind("ident", "an op name like aten.add.Tensor")
        stmt = Stmt(op_tok.text, op_tok, result=tok.text[1:])
        if op_tok.text == "qc.param":
            stmt.target = json.loads(self.expect_kind("string", "the tensor's quoted name").text)
            self.expect(":")
            stmt.type = self.parse_type()
            stmt.kwargs = self.parse_attrs()
            return stmt
        self.expect("(")
        while not self.accept(")"):
            if stmt.args:
                self.expect(",")
            stmt.args.append(self.parse_operand())
        stmt.kwargs = self.parse_attrs()
        self.expect(":")
        stmt.type = self.parse_type()
        return stmt

    def parse_attrs(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        if not self.accept("{"):
            return attrs
        while not self.accept("}"):
            if attrs:
                self.expect(",")
            key = self.expect_kind("ident", "an attribute name")
            if key.text in attrs:
                raise self.error(key, f"attribute {key.text!r} given twice")
            self.expect("=")
            attrs[key.text] = self.parse_operand()
        return attrs

    def parse_operand(self) -> Any:
        tok = self.next()
        if tok.kind == "value":
            return Ref(tok.text[1:], tok)
        if tok.text == "[" and tok.kind == "punct":
            items: list[Any] = []
            while not self.accept("]"):
                if items:
                    self.expect(",")
                items.append(self.parse_operand())
            return items
        if tok.kind == "int":
            return int(tok.text)
        if tok.kind == "float":
            return float(tok.text)
        if tok.kind == "string":
            return json.loads(tok.text)
        if tok.kind == "hash":
            return self._hash_value(tok)
        if tok.kind == "ident":
            if tok.text in _KEYWORDS:
                return _KEYWORDS[tok.text]
            dtype = _DTYPE_BY_NAME.get(tok.text) or getattr(torch, tok.text, None)
            if isinstance(dtype, torch.dtype):
                return dtype
            raise self.error(tok, f"unknown constant {tok.text!r} (expected a number, a string, "
                                  "true/false/none, a dtype like f32, or #cpu)")
        found = "end of file" if tok.kind == "eof" else repr(tok.text)
        raise self.error(tok, f"expected an operand, found {found}")

    def _hash_value(self, tok: Token) -> Any:
        body = tok.text[1:]
        if body.startswith("torch."):
            value = getattr(torch, body.removeprefix("torch."), None)
            if isinstance(value, (torch.layout, torch.memory_format)):
                return value
            raise self.error(tok, f"unknown layout or memory format {tok.text}")
        try:
            return torch.device(body)
        except RuntimeError:
            raise self.error(tok, f"unknown device {tok.text}") from None

    def parse_type(self) -> str:
        tok = self.next()
        if tok.kind == "type":
            return tok.text
        if tok.text == "(" and tok.kind == "punct":
            parts: list[str] = []
            while not self.accept(")"):
                if parts:
                    self.expect(",")
                parts.append(self.parse_type())
            return "(" + ", ".join(parts) + ")"
        if tok.text == "?" or tok.kind == "ident":
            return tok.text
        found = "end of file" if tok.kind == "eof" else repr(tok.text)
        raise self.error(tok, f"expected a type like tensor<4x?xf32>, found {found}")


def parse_func(text: str, filename: str = "<ir>") -> Func:
    """The function of an IR text, or a one-line `IRParseError` with line and column."""
    return Parser(text, filename).parse_func()


def parse_tensor_type(text: str) -> tuple[list[int | None], torch.dtype]:
    """`tensor<?x128xf32>` -> ([None, 128], torch.float32)."""
    m = re.fullmatch(r"((?:(?:\d+|\?)x)*)(\w+)", text[len("tensor<"):-1])
    if m is None:
        raise ValueError(f"bad tensor type {text!r}")
    parts, name = m.group(1).split("x")[:-1], m.group(2)
    dtype = _DTYPE_BY_NAME.get(name) or getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown element type {name!r}")
    dims: list[int | None] = []
    for d in parts:
        dims.append(None if d == "?" else int(d))
    return dims, dtype

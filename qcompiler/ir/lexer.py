"""Tokens of the textual IR, each with its line and column (for one-line parse errors).

The IR is small: value names (`%x`), symbols (`@main`), dotted identifiers (`aten.add.Tensor`,
`f32`, `none`), numbers (`-1`, `1e-06`, `-inf`), JSON-style strings, `#` attributes (`#cpu`,
`#torch.strided`), whole tensor types (`tensor<?x128xf32>`, one token) and punctuation.
`//` starts a comment that runs to the end of the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qcompiler.errors import QCompilerError


class IRParseError(QCompilerError):
    """Malformed IR text: one line, `FILE:LINE:COL: message`."""

    exit_code = 1


@dataclass(frozen=True)
class Token:
    kind: str  # value, symbol, ident, int, float, string, hash, type, punct, eof
    text: str
    line: int
    col: int


_PATTERNS = [
    ("ws", r"[ \t\r\n]+"),
    ("comment", r"//[^\n]*"),
    ("type", r"tensor<[^<>\n]*>"),
    ("value", r"%[A-Za-z0-9_.$-]+"),
    ("symbol", r"@[A-Za-z0-9_.$-]+"),
    ("hash", r"#[A-Za-z0-9_.:]+"),
    ("string", r'"(?:[^"\\\n]|\\.)*"'),
    ("float", r"-?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|inf\b|nan\b)"),
    ("int", r"-?\d+"),
    ("ident", r"[A-Za-z_][A-Za-z0-9_.]*"),
    ("punct", r"->|[()\[\]{}<>,:=?]"),
]
_TOKEN_RE = re.compile("|".join(f"(?P<{k}>{p})" for k, p in _PATTERNS))


def tokenize(text: str, filename: str = "<ir>") -> list[Token]:
    """All tokens of `text` (comments and whitespace dropped), ending with an `eof` token."""
    tokens: list[Token] = []
    pos, line, line_start = 0, 1, 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        col = pos - line_start + 1
        if m is None:
            raise IRParseError(f"{filename}:{line}:{col}: unexpected character {text[pos]!r}")
        kind, tok = m.lastgroup or "", m.group()
        if kind not in ("ws", "comment"):
            tokens.append(Token(kind, tok, line, col))
        newlines = tok.count("\n")
        if newlines:
            line += newlines
            line_start = pos + tok.rindex("\n") + 1
        pos = m.end()
    tokens.append(Token("eof", "", line, pos - line_start + 1))
    return tokens


def header_fields(text: str) -> dict[str, str]:
    """`key=value` pairs of the header comments: `// qcompiler IR: source=... kind=...` and
    `// dims: input_ids.1=seq:2..4096` (values may be JSON strings when they hold spaces)."""
    import json

    fields: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("//"):
            break
        body = line[2:].strip()
        for prefix in ("qcompiler IR:", "dims:"):
            if body.startswith(prefix):
                rest = body[len(prefix):]
                for m in re.finditer(r'([\w.]+)=("(?:[^"\\]|\\.)*"|\S+)', rest):
                    value = m.group(2)
                    key = m.group(1) if prefix != "dims:" else "dim:" + m.group(1)
                    fields[key] = json.loads(value) if value.startswith('"') else value
    return fields

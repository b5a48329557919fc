"""Reading and writing `.qcir` files: the IR text plus the safetensors file its header names.

    write_ir(program, Path("a.qcir"))   # a.qcir + a.safetensors; the header says tensors=...
    program = read_ir(Path("a.qcir"))   # the same program: ops, names, types, tensors, plans

`print_program(read_ir(p))` is `print_program(program)` line for line (header comments aside),
which is what `qc-opt a.qcir -o b.qcir` relies on. A hand-written file needs no tensors file
when its params carry inline values (qcompiler/ir/inline.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qcompiler.ir.build import Builder
from qcompiler.ir.lexer import header_fields
from qcompiler.ir.parser import parse_func
from qcompiler.ir.printer import print_program
from qcompiler.ir.store import Loaded, load_tensors, save_tensors


def parse_program(text: str, filename: str = "<ir>", base_dir: Path | None = None) -> Any:
    """The `Program` an IR text describes (tensors from the header's file, read from
    `base_dir`); malformed text raises a one-line error `FILE:LINE:COL: message`."""
    header = header_fields(text)
    func = parse_func(text, filename)
    loaded = None
    if header.get("tensors"):
        loaded = load_tensors((base_dir or Path(".")) / header["tensors"])
    facts = loaded.facts if loaded else {}
    source = header.get("source", facts.get("source", ""))
    builder = Builder(func, header, loaded.tensors if loaded else {},
                      loaded.inputs if loaded else {}, filename,
                      parameters=loaded.parameters if loaded else None)
    program = builder.build(header.get("kind", facts.get("kind", "module")),
                            "" if source == "<module>" else source, {})
    if loaded is not None:
        loaded.restore_meta(program)
    return program


def check_syntax(text: str, filename: str = "<ir>") -> None:
    """Raise the parse error `text` would give, without building anything (cheap: no fake
    tensors): the syntax and that every op name resolves to a torch op."""
    from qcompiler.ir.build import resolve_op
    from qcompiler.ir.lexer import IRParseError

    for stmt in parse_func(text, filename).body:
        if stmt.op not in ("qc.param", "qc.return") and resolve_op(stmt.op) is None:
            tok = stmt.token
            raise IRParseError(f"{filename}:{tok.line}:{tok.col}: unknown op {stmt.op!r}")


def read_ir(path: Path) -> Any:
    """Parse the `.qcir` file at `path` (its tensors file is looked up beside it)."""
    from qcompiler.errors import QCompilerError

    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise QCompilerError(f"cannot read {path}: {e}") from None
    return parse_program(text, str(path), path.parent)


def write_ir(program: Any, path: Path, header: str = "", check: bool = False) -> Path:
    """Write `program` as `path` (text) and `path.with_suffix('.safetensors')`; returns the
    tensors file. `header` is extra comment text put first (reproducers say what failed);
    `check` first makes sure the text parses back (`check_syntax`), raising if not."""
    from qcompiler.errors import QCompilerError

    tensors = path.with_suffix(".safetensors")
    text = header + print_program(program, tensors=tensors.name)
    if check:
        check_syntax(text, str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tensors(program, tensors)
        path.write_text(text)
    except OSError as e:
        raise QCompilerError(f"cannot write {path}: {e.strerror or e}") from None
    return tensors


__all__ = ["Loaded", "check_syntax", "parse_program", "read_ir", "write_ir"]

"""Our textual IR: printing, shape inference for nodes that passes create, and (in
qcompiler.ir.io, imported on demand) parsing `.qcir` files back into programs."""

from __future__ import annotations

from qcompiler.ir.meta import infer_node_meta
from qcompiler.ir.printer import print_program, type_str

__all__ = ["infer_node_meta", "print_program", "type_str"]

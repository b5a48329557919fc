"""`--emit mlir`: the program as torch-dialect MLIR, through torch-mlir's FX importer.

Steps (as torch-mlir does them): export → decompose → import. HF graphs need
`run_decompositions` first because the importer rejects higher-order ops such as
`wrap_with_set_grad_enabled`. Our `qc::` custom ops have no torch-dialect equivalent; the importer
emits them as `torch.operator "qc.<op>"`, which `torch-mlir-opt` parses. Weights are imported as
`torch.vtensor.literal` dense resources, which is what makes the text large for real models.
"""

from __future__ import annotations

from qcompiler.errors import QCompilerError
from qcompiler.program import Program


def emit_mlir(program: Program, *, elide_weights: bool = False) -> str:
    """MLIR text of the program (torch dialect, value semantics)."""
    try:
        from torch_mlir import ir
        from torch_mlir.dialects import torch as torch_d
        from torch_mlir.extras.fx_decomp_util import get_decomposition_table
        from torch_mlir.extras.fx_importer import FxImporter
    except ImportError as e:
        raise QCompilerError(f"--emit mlir needs the torch-mlir package ({e}); pip install torch-mlir")
    import torch

    table = get_decomposition_table()
    table.pop(torch.ops.aten.linear.default, None)  # keep linear: it is what we quantize
    ep = program.export().run_decompositions(table)
    context = ir.Context()
    torch_d.register_dialect(context)
    importer = FxImporter(context=context)
    try:
        importer.import_frozen_program(ep, func_name="main")
    except Exception as e:  # the importer raises bare exceptions on unsupported ops
        raise QCompilerError(f"torch-mlir could not import the program: {str(e).splitlines()[0]}")
    module = importer.module
    if elide_weights:
        return module.operation.get_asm(large_elements_limit=16)
    return str(module)

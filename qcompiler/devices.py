"""Moving a graph's constants between devices, below both the loader and the decode rewrite.

torch.export records the device of tensors that ops create (`arange(..., device=cpu)`), so a
program exported on the CPU and moved to CUDA would still build those on the CPU. The artifact
loader (qcompiler/runtime.py) and the KV-cache rewrite (qcompiler/decode_program.py) both point
them at the weights' device.
"""

from __future__ import annotations

import torch
import torch.fx as fx


def retarget_graph(gm: fx.GraphModule, device: torch.device | str) -> None:
    """Rewrite `device=` arguments of graph ops (arange, zeros, ...) captured as the export
    device, so that a program exported on the CPU runs on `device`."""
    device = torch.device(device)
    changed = False
    for node in gm.graph.nodes:
        if node.op == "call_function" and isinstance(node.kwargs.get("device"), torch.device):
            if node.kwargs["device"] != device:
                node.kwargs = {**node.kwargs, "device": device}
                changed = True
    if changed:
        gm.recompile()

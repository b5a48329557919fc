"""`copy_with_names`: the public-API replacement for renaming fx nodes in place."""

from __future__ import annotations

import torch
import torch.fx as fx

from qcompiler.graph_copy import copy_with_names


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3, 3))

    def forward(self, x):
        return torch.relu(x @ self.w) + 1


def test_copy_renames_only_the_named_nodes_and_computes_the_same():
    gm = fx.symbolic_trace(Tiny())
    gm.graph.find_nodes(op="get_attr")[0].meta["val"] = "kept"
    names = {n: "fc_weight" for n in gm.graph.find_nodes(op="get_attr")}
    names.update({n: "relu" for n in gm.graph.find_nodes(op="placeholder")})  # taken later
    copy = copy_with_names(gm.graph, names)
    assert [n.name for n in copy.nodes] == ["relu", "fc_weight", "matmul", "relu_1", "add",
                                            "output"]
    assert copy.find_nodes(op="get_attr")[0].meta["val"] == "kept"
    x = torch.randn(2, 3)
    torch.testing.assert_close(fx.GraphModule(gm, copy)(x), gm(x), rtol=0, atol=0)

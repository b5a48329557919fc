"""The textual IR: deterministic, typed, no tensor data, names stable."""

from __future__ import annotations

import re
import subprocess
import sys

import torch

from qcompiler import zoo
from qcompiler.ir import infer_node_meta, print_program


def test_print_is_byte_identical_across_processes():
    code = "from qcompiler import zoo; from qcompiler.ir import print_program; " \
           "print(print_program(zoo.load('llama-tiny')), end='')"
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0] == print_program(zoo.load("llama-tiny"))


def test_ops_params_and_dynamic_shapes():
    text = print_program(zoo.load("llama-tiny"))
    assert text.startswith("// qcompiler IR: source=zoo:llama-tiny kind=causal-lm\n")
    assert "qc.func @main(%input_ids: tensor<?x?xi64>) -> tensor<?x?x512xf32> {" in text
    assert ('%model_layers_0_mlp_down_proj_weight = qc.param '
            '"model.layers.0.mlp.down_proj.weight" : tensor<128x256xf32>') in text
    assert re.search(r"%linear_\d+ = aten.linear\(%\w+, %lm_head_weight\) : "
                     r"tensor<\?x\?x512xf32>", text)
    assert text.rstrip().endswith("}")
    assert len(text.splitlines()) == text.count("\n")


def test_large_tensors_never_printed():
    text = print_program(zoo.load("minilm"))
    assert max(len(line) for line in text.splitlines()) < 400
    assert "tensor(" not in text and "0.0" not in text.split("qc.func")[0]


def test_new_nodes_get_types_inferred():
    program = zoo.load("llama-tiny")
    linear = next(program.linears())
    with program.graph.inserting_after(linear):
        node = program.graph.call_function(torch.ops.aten.relu.default, (linear,))
    val = infer_node_meta(node)
    assert tuple(val.shape)[2] == 128 and val.dtype == torch.float32

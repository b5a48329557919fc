"""A Program as a `torch.export.ExportedProgram` without tracing it again.

Why: saving a program (the artifact's program.pt2, the zoo's capture cache) needs an
ExportedProgram, and re-running `torch.export` on the Program's GraphModule re-traces every node
under fake tensors: 3.4 of the 12.5 CPU-seconds of compiling stories260k. The graph already holds
everything tracing would rebuild: torch.export annotated every node with its `meta["val"]` fake
tensor at capture (symbolic sizes in one ShapeEnv), and passes annotate the nodes they add
(ir/meta.py `infer_node_meta`), so lifting is bookkeeping only. The program's `get_attr` nodes
become parameter/buffer placeholders ahead of the user inputs (torch.export's lifted form), and
the graph signature, state dict, the range of each symbolic size and the pytree calling
convention are written as torch.export would write them. The ExportedProgram's constructor runs
torch.export's verifier on the result.

`lift` returns None when the graph is not in that shape (a node without a fake value, values
from different fake modes, a non-tensor attribute or output); `Program.export` then traces.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx


def lift(program: Any) -> torch.export.ExportedProgram | None:
    """The ExportedProgram of `program` built from its graph, or None if it cannot be."""
    from torch._guards import detect_fake_mode
    from torch._subclasses.fake_tensor import FakeTensor

    vals = []
    for n in program.graph.nodes:
        if n.op in ("get_attr", "output"):
            continue
        v = n.meta.get("val")
        if isinstance(v, FakeTensor):
            vals.append(v)
        elif not (isinstance(v, torch.SymInt) or (v is None and not n.users)):
            # a real tensor, a tuple, an unannotated value: torch.export traces those itself
            # (sizes are SymInts and asserts such as _assert_tensor_metadata have no value)
            return None
    try:
        mode = detect_fake_mode(vals)
    except AssertionError:  # values from more than one fake mode
        return None
    if mode is None:
        return None

    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    outputs = graph.graph_copy(program.graph, env)  # the output's value; no output node yet

    user_inputs = [n for n in graph.nodes if n.op == "placeholder"]
    first = user_inputs[0] if user_inputs else next(iter(graph.nodes), None)
    lifted: dict[str, fx.Node] = {}
    state: dict[str, torch.Tensor] = {}
    specs = []
    for node in [n for n in graph.nodes if n.op == "get_attr"]:
        target = str(node.target)
        if target not in lifted:
            try:
                owner, attr = program.owner_of(target)
            except AttributeError:
                return None
            is_param = attr in owner._parameters
            if not is_param and attr not in owner._buffers:
                return None  # a submodule or a plain attribute: not a lifted state
            tensor = getattr(owner, attr)
            prefix = "p_" if is_param else "b_"
            if first is not None:
                with graph.inserting_before(first):
                    ph = graph.placeholder(prefix + target.replace(".", "_"))
            else:
                ph = graph.placeholder(prefix + target.replace(".", "_"))
            ph.meta["val"] = mode.from_tensor(tensor, static_shapes=True)
            lifted[target] = ph
            state[target] = tensor
            kind = "PARAMETER" if is_param else "BUFFER"
            persistent = None if is_param else attr not in owner._non_persistent_buffers_set
            specs.append((kind, ph, target, persistent))
        node.replace_all_uses_with(lifted[target])
        graph.erase_node(node)

    from torch.export.graph_signature import (ExportGraphSignature, InputKind, InputSpec,
                                              OutputKind, OutputSpec, TensorArgument)
    from torch.utils import _pytree as pytree

    flat_out, out_spec = pytree.tree_flatten(outputs)
    if not flat_out or any(not isinstance(o, fx.Node) for o in flat_out):
        return None
    graph.output(tuple(flat_out))
    input_specs = [InputSpec(kind=getattr(InputKind, kind), arg=TensorArgument(name=ph.name),
                             target=target, persistent=persistent)
                   for kind, ph, target, persistent in specs]
    input_specs += [InputSpec(kind=InputKind.USER_INPUT, arg=TensorArgument(name=ph.name),
                              target=None, persistent=None) for ph in user_inputs]
    output_specs = [OutputSpec(kind=OutputKind.USER_OUTPUT, arg=TensorArgument(name=o.name),
                               target=None) for o in flat_out]
    signature = ExportGraphSignature(input_specs=input_specs, output_specs=output_specs)

    from torch.export.exported_program import (ExportedProgram, ModuleCallEntry,
                                               ModuleCallSignature)

    args = tuple(program.example_inputs)
    _, in_spec = pytree.tree_flatten((args, {}))
    call = ModuleCallSignature(inputs=[], outputs=[], in_spec=in_spec, out_spec=out_spec,
                               forward_arg_names=[ph.target for ph in user_inputs])
    ranges = _ranges(graph, user_inputs, program.dynamic_dims)
    if ranges is None:
        return None
    root = fx.GraphModule(torch.nn.Module(), graph)
    try:
        return ExportedProgram(
            root=root, graph=root.graph, graph_signature=signature, state_dict=state,
            range_constraints=ranges,
            module_call_graph=[ModuleCallEntry(fqn="", signature=call)],
            example_inputs=(args, {}), constants={})
    except Exception:  # the verifier refused it: let torch.export trace instead
        return None


def _ranges(graph: fx.Graph, inputs: list[fx.Node], dims: list[Any]) -> dict[Any, Any] | None:
    """Value range of every symbol in the graph's sizes, as torch.export records them: a
    dynamic input dimension gets the range the program declares for it (tracing may have
    refined the ShapeEnv's, e.g. to >= 2 where an op asked whether a size is 1; export keeps
    the declared one), any other symbol its ShapeEnv range (a deep-copied program carries a
    copy of the ShapeEnv, so it is read from the size itself). None when a declared dynamic
    dimension is not a plain symbol any more (a pass pinned it): then torch.export must trace."""
    from torch.utils._sympy.value_ranges import ValueRanges

    ranges: dict[Any, Any] = {}
    for d in dims:
        if d.input_index >= len(inputs):
            return None
        val = inputs[d.input_index].meta.get("val")
        size = val.shape[d.dim] if isinstance(val, torch.Tensor) and d.dim < val.dim() else None
        if not isinstance(size, torch.SymInt) or not size.node.expr.is_Symbol:
            return None
        ranges[size.node.expr] = ValueRanges(d.min, d.max)
    for node in graph.nodes:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            for size in val.shape:
                if isinstance(size, torch.SymInt):
                    known = size.node.shape_env.var_to_range
                    for s in size.node.expr.free_symbols:
                        if s in known:
                            ranges.setdefault(s, known[s])
    return dict(sorted(ranges.items(), key=lambda kv: str(kv[0])))

"""`rotate`: rotate the residual stream by an orthogonal Q folded into the weights (QuaRot).

    rotate                      randomized Hadamard (H·diag(±1), seed 0)
    rotate{kind=random,seed=3}  Haar-random orthogonal matrix
    rotate{online-down=true}    plus an online Hadamard on down_proj's input

With h' = h·Q carried on the residual stream instead of h, the function is unchanged when
- the embedding tables (the stream's writers at the start) become E·Q,
- every linear reading a norm of the stream (q/k/v, gate/up, lm_head) becomes W·Q, because an
  RMSNorm with unit weight commutes with Q (‖hQ‖ = ‖h‖),
- every linear adding into the stream (o_proj, down_proj) becomes Qᵀ·W, its bias Qᵀ·b.
A Hadamard-like Q spreads outlier channels over all channels, so 4-bit groups are no longer
sized by one large value (QuaRot, arXiv 2404.00456; SpinQuant uses the random kind).

Norm weights must be 1: this pass does not fold them itself (one pass, one job, and the IR
between the two stays inspectable); it fails with a message saying to put `fold-norms` first.
LayerNorm subtracts the mean, which does not commute with a rotation, and post-norm models put
the norm on the stream itself, so GPT-2, OPT, BERT and MiniLM are rejected with a one-line
error; Llama, Qwen2, Mistral (and Phi-3, fused projections included) and Gemma (its `(1 + w)`
norms folded by fold-norms, its embeddings scaled by a scalar, which commutes with Q) are
supported. The graph must be canonicalized first: casts, aliases and metadata asserts between
the stream and its readers would look like uses a rotation changes, so an uncanonicalized graph
is refused with "run canonicalize first" rather than blamed on the model.

`online-down=true` also inserts `qc.hadamard` (x ↦ x·H) before each down_proj and folds Hᵀ into
its weight (W ← W·H): down_proj's input has the largest activation outliers and lies behind
the gated product, so no weight before it can absorb a rotation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NoReturn

import torch
import torch.fx as fx

from qcompiler.errors import PassError
from qcompiler.graph_match import iter_weight_uses, value_uses
from qcompiler.graph_norms import Norm, find_norms, norm_consumers
from qcompiler.hadamard import has_hadamard, hadamard, random_hadamard, random_orthogonal
from qcompiler.ir.meta import infer_node_meta
from qcompiler.pass_registry import register_pass
from qcompiler.passes.canonicalize import require_canonical
from qcompiler.passes_base import Pass, PassContext, PassResult
from qcompiler.program import Program
from qcompiler.residual_stream import ResidualStream, decoder_layers, find_residual_stream

SUPPORTED = "rotate supports pre-norm RMSNorm decoders (Llama, Qwen2, Mistral)"


@register_pass
@dataclass(frozen=True)
class Rotate(Pass):
    """Rotate the residual stream by an orthogonal matrix folded into the weights (QuaRot)."""

    name = "rotate"
    kind: Literal["hadamard", "random"] = "hadamard"
    seed: int = 0
    online_down: bool = False

    def apply(self, program: Program, ctx: PassContext) -> PassResult:
        require_canonical(program, self.name, "canonicalize,fold-norms,rotate")
        norms = find_norms(program)
        stream = find_residual_stream(program, norms)
        readers, writers = self._check(program, stream)
        hidden = int(stream.embeddings[0].meta["val"].shape[-1])
        q = self._rotation(hidden)
        plan: dict[str, tuple[str, set[fx.Node]]] = {}  # tensor -> ("in" | "out", its users)
        for emb in stream.embeddings:
            self._claim(plan, emb.args[0], "in", emb)
        for linear in readers:
            self._claim(plan, linear.args[1], "in", linear)
        for linear in writers:
            self._claim(plan, linear.args[1], "out", linear)
            bias = linear.args[2] if len(linear.args) > 2 else None
            if isinstance(bias, fx.Node):
                self._claim(plan, bias, "out", linear)
        for target, (_, users) in plan.items():
            stray = [u for _, u in iter_weight_uses(program, target) if u not in users]
            if stray:
                raise PassError(self.name, f"tensor {target} is also used by %{stray[0].name}, "
                                "which the rotation would change; untie it first")
        downs = self._online_downs(program, stream) if self.online_down else {}
        for target, (side, _) in plan.items():
            w = program.get_tensor(target).detach()
            w64 = w.to(torch.float64)
            out = w64 @ q if side == "in" or w.dim() == 1 else q.T @ w64
            if target in downs:
                out = out @ hadamard(w.shape[-1])
            program.set_tensor(target, out.to(w.dtype))
        for linear in downs.values():
            _insert_hadamard(program, linear)
        program.recompile()
        ctx.log(f"rotate: {self.kind} rotation of size {hidden} folded into "
                f"{len(readers)} readers and {len(writers)} writers", level=1)
        stats = {"layers-changed": len(readers) + len(writers), "online-hadamards": len(downs)}
        return PassResult(True, stats)

    # ---- what may be rotated ---------------------------------------------------------------
    def _check(self, program: Program, stream: ResidualStream | None
               ) -> tuple[list[fx.Node], list[fx.Node]]:  # noqa: C901 (a list of checks)
        """The stream's reader and writer linears; a PassError for anything not rotatable."""
        if stream is None:
            self._fail(f"no token embedding found; {SUPPORTED}")
        for norm in [*stream.in_stream_norms, *stream.readers]:
            if norm.kind == "layer":
                self._fail(f"{norm.name} is a LayerNorm, whose mean subtraction does not commute "
                           f"with a rotation; {SUPPORTED}")
        if stream.in_stream_norms or stream.direct_readers:
            self._fail(f"post-norm model (the residual stream is normalized in place); "
                       f"{SUPPORTED}")
        if stream.other_uses:  # before "no LM head": an unknown use also hides the LM head
            use = stream.other_uses[0]
            self._fail(f"the residual stream feeds %{use.name} ({_op(use)}), which a rotation "
                       f"would change; {SUPPORTED}")
        if stream.output_is_stream or stream.lm_head is None:
            self._fail(f"the residual stream is the program output (no LM head); {SUPPORTED}")
        readers: list[fx.Node] = []
        for norm in stream.readers:
            self._check_unit_weight(program, norm)
            linears, others = norm_consumers(norm)
            if others:
                self._fail(f"the output of {norm.name} feeds %{others[0].name} "
                           f"({_op(others[0])}), not only linears; {SUPPORTED}")
            readers += [lin for lin in linears if lin not in readers]
        adds = set(stream.adds) | set(stream.writer_paths)  # MoE: weighted sums of experts
        for writer in stream.writers:
            extra = [u for u in value_uses(writer) if u not in adds]
            if extra:
                self._fail(f"the output of %{writer.name} is used by %{extra[0].name} besides "
                           f"the residual add; {SUPPORTED}")
        return readers, list(dict.fromkeys(stream.writers))

    def _check_unit_weight(self, program: Program, norm: Norm) -> None:
        if norm.weight is None:
            return
        gamma = program.get_tensor(str(norm.weight.target)) + norm.offset  # Gemma: 1 + w
        if not bool((gamma == 1).all()):
            self._fail(f"{norm.name} has a non-unit weight, which does not commute with a "
                       "rotation; put fold-norms first (-p 'fold-norms,rotate')")

    def _claim(self, plan: dict[str, tuple[str, set[fx.Node]]], attr: fx.Node, side: str,
               user: fx.Node) -> None:
        target = str(attr.target)
        old_side, users = plan.setdefault(target, (side, set()))
        if old_side != side:
            self._fail(f"tensor {target} both reads and writes the residual stream; untie it")
        users.add(user)

    def _rotation(self, hidden: int) -> torch.Tensor:
        if self.kind == "random":
            return random_orthogonal(hidden, self.seed)
        if not has_hadamard(hidden):
            self._fail(f"no Hadamard matrix of order {hidden} (the hidden size) is known; "
                       "use rotate{kind=random}")
        return random_hadamard(hidden, self.seed)

    def _online_downs(self, program: Program, stream: ResidualStream) -> dict[str, fx.Node]:
        downs: dict[str, fx.Node] = {}
        for layer in decoder_layers(program, stream):
            for down in layer.downs():  # one per MoE expert
                target = str(down.args[1].target)
                k = int(program.get_tensor(target).shape[-1])
                if not has_hadamard(k):
                    self._fail(f"online-down needs a Hadamard matrix of order {k} (the input "
                               f"size of {target.removesuffix('.weight')}), which is not "
                               "known; use online-down=false")
                downs[target] = down
        return downs

    def _fail(self, message: str) -> NoReturn:
        raise PassError(self.name, message)


def _insert_hadamard(program: Program, linear: fx.Node) -> None:
    """x ↦ qc.hadamard(x) on the linear's input (its weight already carries Hᵀ's partner H)."""
    from qcompiler.hadamard_op import hadamard_op

    x = linear.args[0]
    with program.graph.inserting_before(linear):
        node = program.graph.create_node("call_function", hadamard_op(), (x,), name="hadamard")
    for key in ("stack_trace", "nn_module_stack"):
        if key in linear.meta:
            node.meta[key] = linear.meta[key]
    infer_node_meta(node)
    linear.replace_input_with(x, node)


def _op(node: fx.Node) -> str:
    if node.op == "output":
        return "the program output"
    return getattr(node.target, "__name__", str(node.target)).split(".")[0]

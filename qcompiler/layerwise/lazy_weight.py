"""Weights that are not in memory yet, with the transforms already applied to them recorded.

The weight-folding passes (`fold-norms`, `rotate`) rewrite every weight of the model: W·diag γ,
W·Q, Qᵀ·W. A layer-wise compile cannot hold the model to do that up front, and re-deriving
which tensor gets which transform outside those passes would duplicate their analysis. So the
passes run unchanged on the whole (streamed) program, whose big tensors are `LazyWeight`s: a
tensor subclass backed by a zero-stride stand-in (shape and dtype, no memory) that records each
torch operation applied to it instead of computing it (the result's shape comes from the same
operation on meta tensors). Later, when its decoder layer is processed, `realize` reads the
tensor from its shard and replays the recorded operations, the same functions on the same
operands in the same order, so the values are bitwise those of the whole-model path.

After the passes, `detach_transforms` swaps every LazyWeight for a plain stand-in and keeps its
recipe in `program.meta["lazy_tensors"]` (a `LazySource`, still unpacking as `shard, key`), where
`qcompiler.lazy_tensors.load_lazy_tensor` / `iter_lazy_tensor` apply it: streaming readers need not
know about transforms. A recipe whose operations keep rows independent (elementwise scaling of
columns, `W @ Q`, casts) is replayed a block of rows at a time, so the embedding table and LM
head are never whole in float64.

A pass that reads a lazy weight's *values* (`bool`, `item`, `torch.equal`) gets a one-line
error: such a pass cannot run before the weights are read layer by layer.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils._pytree import tree_flatten, tree_map

from qcompiler.errors import QCompilerError

# Read the values: impossible on a recording; say so instead of answering from the stand-in.
_VALUE_READS = {
    torch.Tensor.__bool__, torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy,
    torch.Tensor.__float__, torch.Tensor.__int__, torch.equal, torch.allclose,
    torch.Tensor.equal, torch.Tensor.allclose, torch.Tensor.__index__,
}
# Operations whose result keeps row i of the lazy operand in row i (replayable by row blocks).
_ROW_SAFE = {"detach", "to", "clone", "contiguous", "mul", "__mul__", "__rmul__", "add",
             "__add__", "__radd__", "sub", "__sub__", "div", "__truediv__", "matmul",
             "__matmul__", "mm", "float", "double", "type_as", "neg", "__neg__"}


class LazyWeight(torch.Tensor):
    """A stand-in tensor that records the operations applied to it (module docstring)."""

    _lw_op: tuple[Any, ...]

    @staticmethod
    def wrap(like: torch.Tensor, op: tuple[Any, ...]) -> LazyWeight:
        """A LazyWeight of `like`'s shape and dtype, backed by one element (stride 0, not a
        view: fake-tensor conversion of a view needs autograd metadata we do not have)."""
        shape = tuple(like.shape)
        plain = torch.empty_strided(shape, (0,) * len(shape), dtype=like.dtype)
        with torch._C.DisableTorchFunctionSubclass():
            t = torch.Tensor._make_subclass(LazyWeight, plain)
        t._lw_op = op
        t._lw_plain = plain
        return t

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        kwargs = kwargs or {}
        if func in _VALUE_READS:
            raise QCompilerError("a pass read the values of a weight that a layer-wise compile "
                                 "has not loaded yet; put that pass after the calibrated passes "
                                 "or compile without streaming (--no-stream)")
        if getattr(func, "__name__", "") == "requires_grad_":
            return args[0]
        try:
            with torch._C.DisableTorchFunctionSubclass():
                out = func(*tree_map(_to_meta, args), **tree_map(_to_meta, kwargs))
        except (RuntimeError, NotImplementedError, TypeError):
            out = None
        if isinstance(out, torch.Tensor):
            return LazyWeight.wrap(out, ("call", func, args, kwargs))
        with torch._C.DisableTorchFunctionSubclass():  # shape, dtype, dim, is_floating_point
            return func(*tree_map(_plain, args), **tree_map(_plain, kwargs))

    def __deepcopy__(self, memo: dict) -> LazyWeight:
        return self  # immutable: a recording is never changed in place

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise QCompilerError("a layer-wise compile cannot save a weight it has not read yet")


def _to_meta(x: Any) -> Any:
    if isinstance(x, LazyWeight):
        return torch.empty(tuple(x.shape), dtype=x.dtype, device="meta")
    if isinstance(x, torch.Tensor):
        return x.to("meta")
    return x


def _plain(x: Any) -> Any:
    return x._lw_plain if isinstance(x, LazyWeight) else x


def record(standin: torch.Tensor, source: list[str]) -> LazyWeight:
    """A LazyWeight for the streamed tensor `source` = [shard, key]: its value is what the
    loader reads there."""
    t = LazyWeight.wrap(standin, ("load",))
    t._lw_source = list(source)
    return t


def _lazy_args(t: LazyWeight) -> list[LazyWeight]:
    flat, _ = tree_flatten((t._lw_op[2], t._lw_op[3]))
    return [a for a in flat if isinstance(a, LazyWeight)]


def root_of(t: LazyWeight) -> LazyWeight:
    """The recording's start: the streamed tensor itself (one per recording: transforms
    combine a weight with real tensors only)."""
    while t._lw_op[0] != "load":
        lazies = _lazy_args(t)
        if len(lazies) != 1:
            raise QCompilerError("layer-wise compile: a pass combined two weights that are not "
                                 "loaded yet; compile without streaming (--no-stream)")
        t = lazies[0]
    return t


def row_separable(t: LazyWeight) -> bool:
    """Whether replaying `t`'s operations on a block of the loaded rows gives those rows."""
    op = t._lw_op
    if op[0] == "load":
        return True
    _, func, args, kwargs = op
    name = getattr(func, "__name__", "")
    if name not in _ROW_SAFE:
        return False
    lazies = _lazy_args(t)
    if len(lazies) != 1 or any(isinstance(v, LazyWeight) for v in kwargs.values()):
        return False
    lazy = lazies[0]
    if name in ("matmul", "__matmul__", "mm") and args[0] is not lazy:
        return False  # Q @ W mixes rows
    for other in args:
        if isinstance(other, torch.Tensor) and other is not lazy and name not in (
                "matmul", "__matmul__", "mm", "type_as"):
            if other.dim() >= lazy.dim() and other.shape[0] != 1:
                return False  # an elementwise operand with its own rows
    return row_separable(lazy)


def replay(t: LazyWeight, load: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The value of `t`: `load()` for the streamed tensor, then the recorded operations."""
    op = t._lw_op
    if op[0] == "load":
        return load()
    _, func, args, kwargs = op

    def value(x: Any) -> Any:
        return replay(x, load) if isinstance(x, LazyWeight) else x

    with torch._C.DisableTorchFunctionSubclass():
        return func(*tree_map(value, args), **tree_map(value, kwargs))


class LazySource(list):
    """`[shard, key]` of a streamed tensor plus the recorded transform of its value."""

    def __init__(self, shard: str, key: str, recipe: LazyWeight) -> None:
        super().__init__([shard, key])
        self.recipe = recipe
        self.by_rows = row_separable(recipe)
        root = root_of(recipe)
        self.root_shape, self.root_dtype = tuple(root.shape), root.dtype

    def finish(self, raw: torch.Tensor) -> torch.Tensor:
        """The transformed value of `raw` as read from the shard (the whole tensor or, when
        `by_rows`, a block of its rows)."""
        raw = raw.to(self.root_dtype)
        return replay(self.recipe, lambda: raw)

    def __deepcopy__(self, memo: dict) -> LazySource:
        return self


def wrap_lazy_tensors(program: Any) -> list[str]:
    """Replace every streamed tensor of `program` by a recording LazyWeight; returns the names."""
    lazy = program.meta.get("lazy_tensors") or {}
    names = [n for n in lazy if program.has_tensor(n)]
    for name in names:
        program.set_tensor(name, record(_plain(program.get_tensor(name)), lazy[name]))
    return names


def detach_transforms(program: Any) -> int:
    """Swap each LazyWeight in `program` for a plain stand-in, moving its recipe into
    `meta["lazy_tensors"]` (also for tensors a pass created, such as untied copies); returns
    how many carry a transform."""
    lazy = dict(program.meta.get("lazy_tensors") or {})
    transformed = 0
    for name, t in program.tensors().items():
        if not isinstance(t, LazyWeight):
            continue
        shard, key = root_of(t)._lw_source
        if t._lw_op[0] == "load":
            lazy[name] = [shard, key]
        else:
            lazy[name] = LazySource(shard, key, t)
            transformed += 1
        program.set_tensor(name, torch.zeros((), dtype=t.dtype).expand(tuple(t.shape)))
    program.meta["lazy_tensors"] = lazy
    return transformed

"""Calibration data and per-layer activation statistics for the calibration-based passes.

Passes that need activations (clip{objective=output-mse}, gptq, pot-refine, lorc, smooth, aqas)
ask for them through two functions:

    batches = calibration_batches(program, ctx)          # model inputs, shared by all passes
    stats = collect_linear_stats(program, batches, layers, hessian=True, ctx=ctx)
    stats["model.layers.0.self_attn.q_proj"].hessian      # Σ xᵀx over every calibration token

Where the data comes from (`CalibrationConfig`, put in `ctx.calibration` by the driver):
- `text` given: the second half of its lines (held out: `qcompile eval --text` on the same
  file reads from the start, qcompiler/text_data.py), tokenized with the model's tokenizer and
  cut into `samples` consecutive chunks (encoders: one line per sample); `sampled` > 0 adds that
  many sequences sampled from the model (a mix of text and sampled data).
- no text, causal LM: sequences sampled from the model itself (temperature 1, seeded), so
  calibration works offline on any checkpoint; encoders: random ordinary tokens (seeded);
  other modules: seeded random inputs shaped like the example inputs (the dynamic dimension,
  if any, set to `seqlen`). `batches` given explicitly (Python API) wins over all of these.
Sampling (qcompiler/sampling.py) runs each token once through a KV cache when the program
still computes what its Hugging Face config describes (the HF model, sharing the program's
tensors, is checked against the program on a probe first): samples·seqlen token-forwards.
Otherwise (a program whose graph a pass changed, a non-HF model) it runs the whole prefix per
token, samples·seqlen²/2 token-forwards: long for a 1B model on a CPU; give text there.
The batches are made once per config and kept in it, so a pipeline with several calibrated
passes runs the sampler once. They are made from the program as the FIRST calibrated pass sees
it: later passes calibrate on the same inputs.

SLAC (sequence-length-aware calibration, Lee et al., EMNLP 2023): activation ranges depend on the
sequence length, so calibration should see the lengths of the target task rather than one fixed
long length. Our rule, with `slac=True`: `seqlen` is the target task's (maximum) length and the
`samples` lengths spread evenly over it, L_i = max(min_len, round(seqlen·(i+1)/samples)) with
min_len = min(seqlen, 16), i = 0..samples-1. A task whose inputs have lengths up to `seqlen`
sees every prefix length equally often; this spread reproduces that distribution of positions
(for a causal model, a length-L sequence's activations at position p do not depend on L, so
what the spread changes is how often each position is seen; for an encoder it also changes what
each token attends over). Without SLAC every sample has length `seqlen`. The exact procedure of
the paper was not available to us; this rule is our choice and is recorded here.

Statistics are accumulated while the graph runs (an `fx.Interpreter` that hands each linear's
input to an accumulator as soon as that value is computed), never by storing activations, so memory is bounded by the
statistics themselves. Linears that read the same input node (q/k/v, gate/up) share one Hessian.

Several processes (torch.distributed, qcompiler/distributed.py, docs/DISTRIBUTED.md): each rank
runs its share of the batches (r, r+W, ...) and the statistics are combined here, at the end of
each chunk, so every calibrated pass gets them whole: Hessians and token counts summed, absmax by
max, row samples merged. The row sample is a reservoir by seeded random keys, one generator per
(input, batch), ties broken by position: the rows kept are the same whether one process or
several saw the batches, so samples and absmax are bit-identical to one process's; a Hessian is
a float sum whose order depends on the split (last bits may differ).

Memory rule: a Hessian is K×K float32 (4·K² bytes) and the row subsample (`max_samples` rows, a
seeded reservoir over all tokens) max_samples·K·4 bytes, per distinct input. When the requested
statistics together exceed `HESSIAN_BUDGET_BYTES` (1 GiB), the layers are split into chunks under
that budget, in graph order, and the calibration batches run once per chunk (time traded for
memory); `iter_linear_stats` hands them out chunk by chunk so a pass can use and free each one.
A single input bigger than the budget still gets its statistics (a chunk of its own).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.fx as fx

from qcompiler.errors import QCompilerError, UsageError
from qcompiler.stats_memo import memoized

HESSIAN_BUDGET_BYTES = 1 << 30
SLAC_MIN_LEN = 16

Batch = Any  # a Tensor (single-input programs: every language model) or a tuple of tensors


@dataclass
class CalibrationConfig:
    """How to calibrate: how many sequences, how long, from which text, seed, SLAC."""

    samples: int = 16
    seqlen: int = 128
    text: str | None = None
    seed: int = 0
    slac: bool = False
    sampled: int = 0  # with text: this many more sequences sampled from the model
    batches: list[Batch] | None = None  # explicit model inputs (Python API), used as given
    # the global indices of `batches` when they are already this process's share (a layer-wise
    # run over several processes keeps only its share of the activations); None: all of them
    shard: list[int] | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise UsageError(f"calibration needs at least 1 sample, got {self.samples}; "
                                 "use --calib-samples N with N >= 1")
        if self.sampled < 0:
            raise UsageError(f"--calib-sampled must be >= 0, got {self.sampled}")
        if self.seqlen < 2:
            raise UsageError(f"calibration sequences need at least 2 tokens, got "
                                 f"{self.seqlen}; use --calib-seqlen L with L >= 2")

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> CalibrationConfig:
        """A config whose text is the file's contents; a one-line error if it cannot be read."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            raise QCompilerError(f"calibration file {path} does not exist; give --calib a "
                                 "text file (or leave it out to sample from the model)") from None
        except OSError as e:
            raise QCompilerError(f"cannot read calibration file {path}: {e.strerror}") from None
        if not text.strip():
            raise QCompilerError(f"calibration file {path} is empty; give it some text")
        return cls(text=text, **kwargs)

    def lengths(self) -> list[int]:
        """The length of each calibration sequence (the SLAC rule in the module docstring)."""
        if not self.slac:
            return [self.seqlen] * self.samples
        lo = min(self.seqlen, SLAC_MIN_LEN)
        return [max(lo, round(self.seqlen * (i + 1) / self.samples)) for i in range(self.samples)]


@dataclass
class LinearStats:
    """What one linear's input looked like over the calibration data.

    absmax: [K] max |x| per input channel. hessian: [K, K] Σ xᵀx (float32, NOT divided by the
    token count), shared with the other linears that read the same input. tokens: rows seen.
    samples: [S, K] a seeded uniform subsample of the input rows (S <= max_samples).
    """

    absmax: torch.Tensor | None
    hessian: torch.Tensor | None
    tokens: int
    samples: torch.Tensor | None = None


# ---- calibration inputs ------------------------------------------------------------------------
def get_config(ctx: Any) -> CalibrationConfig:
    """`ctx.calibration`, creating the default config there when the driver gave none."""
    cfg = getattr(ctx, "calibration", None) if ctx is not None else None
    if cfg is None:
        cfg = CalibrationConfig()
        if ctx is not None:
            ctx.calibration = cfg
    if not isinstance(cfg, CalibrationConfig):
        raise QCompilerError(f"ctx.calibration must be a CalibrationConfig, got "
                             f"{type(cfg).__name__}")
    return cfg


def calibration_batches(program: Any, ctx: Any = None) -> list[Batch]:
    """The calibration inputs for `program` (made once per config, then shared)."""
    cfg = get_config(ctx)
    if cfg.batches is not None:
        return list(cfg.batches)
    key = f"{program.kind}:{len(program.example_inputs)}"
    if key not in cfg._cache:
        if ctx is not None:
            source = ("text (second half of the lines)" if cfg.text else
                      "sampled" if program.kind == "causal-lm" else "random")
            if cfg.text and cfg.sampled:
                source += f" + {cfg.sampled} sampled"
            ctx.log(f"calibration: {cfg.samples} sequences, lengths "
                    f"{_describe(cfg.lengths())}, {source}")
        cfg._cache[key] = make_batches(program, cfg)
    return list(cfg._cache[key])


def make_batches(program: Any, cfg: CalibrationConfig) -> list[Batch]:
    """Build the batches for `cfg` (no caching): text, sampled, random tokens or random inputs."""
    from qcompiler import evaluate, sampling, text_data

    lengths = cfg.lengths()
    if program.kind not in ("causal-lm", "encoder"):
        return _module_batches(program, cfg, lengths)
    from qcompiler.distributed import current

    group = current()
    config = program.meta.get("config") or {}
    vocab = int(config.get("vocab_size") or int(program.example_inputs[0].max()) + 1)
    if cfg.text is not None:
        tokenizer = program_tokenizer(program)
        if tokenizer is None:
            raise QCompilerError("--calib needs the model's tokenizer and this model has none; "
                                 "leave out --calib to calibrate on sequences sampled from the "
                                 "model")
        out = _text_batches(text_data.calibration_part(cfg.text), tokenizer, lengths,
                            program.kind)
        if cfg.sampled and program.kind == "causal-lm":
            bos = config.get("bos_token_id")
            out += _spread(cfg.sampled, lambda i: sampling.sample_sequence(
                program, vocab, cfg.seqlen, cfg.seed + i, bos), group)
            sampling.release(program)
        elif cfg.sampled:
            for i in range(cfg.sampled):
                out += evaluate.random_sequences(vocab, 1, cfg.seqlen, cfg.seed + i, tokenizer)
        return out
    if program.kind == "causal-lm":
        bos = config.get("bos_token_id")
        out = _spread(len(lengths), lambda i: sampling.sample_sequence(
            program, vocab, lengths[i], cfg.seed + i, bos), group)
        sampling.release(program)  # passes replace tensors next: do not keep the old ones
        return out
    tokenizer = program_tokenizer(program)
    out = []
    for i, length in enumerate(lengths):
        out += evaluate.random_sequences(vocab, 1, length, cfg.seed + i, tokenizer)
    return out


def _spread(count: int, make: Any, group: Any) -> list[torch.Tensor]:
    """[make(0), ..., make(count-1)]; over several processes each rank makes its share and the
    token ids are exchanged (sampling is the slow part of calibrating on sampled data)."""
    if group is None:
        return [make(i) for i in range(count)]
    from qcompiler.distributed import gather_tensors, share

    mine = {str(i): make(i) for i in share(count, group)}
    out: dict[int, torch.Tensor] = {}
    for part in gather_tensors(mine, group):
        out.update({int(k): v for k, v in part.items()})
    return [out[i] for i in range(count)]


def _text_batches(text: str, tokenizer: Any, lengths: list[int], kind: str) -> list[torch.Tensor]:
    """Consecutive chunks of the given lengths (decoders) or one line per sample (encoders)."""
    if kind != "causal-lm":
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            raise QCompilerError("the calibration file has no non-empty lines")
        return [tokenizer(lines[i % len(lines)], return_tensors="pt", truncation=True,
                          max_length=length)["input_ids"] for i, length in enumerate(lengths)]
    ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
    out, pos = [], 0
    for length in lengths:
        if pos + 2 > len(ids):
            break
        out.append(ids[pos:pos + length][None].clone())
        pos += length
    if not out:
        raise QCompilerError("the calibration file has fewer than 2 tokens; give it more text")
    return out


def _module_batches(program: Any, cfg: CalibrationConfig, lengths: list[int]) -> list[Batch]:
    """Seeded random inputs with the example inputs' shapes and value ranges."""
    g = torch.Generator().manual_seed(cfg.seed)
    out: list[Batch] = []
    for length in lengths:
        inputs = []
        for idx, ex in enumerate(program.example_inputs):
            shape = list(ex.shape)
            for d in program.dynamic_dims:
                if d.input_index == idx:
                    shape[d.dim] = max(d.min, min(d.max, length))
            if ex.is_floating_point():
                inputs.append(torch.randn(shape, generator=g).to(ex.dtype))
            else:
                hi = max(int(ex.max()) + 1, 1) if ex.numel() else 1
                inputs.append(torch.randint(0, hi, shape, generator=g).to(ex.dtype))
        out.append(inputs[0] if len(inputs) == 1 else tuple(inputs))
    return out


def program_tokenizer(program: Any) -> Any:
    """The tokenizer of the checkpoint the program was captured from; None when it has none."""
    directory = program.meta.get("model_dir")
    if not directory:
        return None
    from qcompiler.hf_tokenizer import load_tokenizer

    return load_tokenizer(Path(directory))


def _describe(lengths: list[int]) -> str:
    return str(lengths[0]) if len(set(lengths)) == 1 else f"{min(lengths)}..{max(lengths)}"


# ---- statistics --------------------------------------------------------------------------------
class _Accumulator:
    """Running statistics of one linear input node."""

    def __init__(self, k: int, absmax: bool, hessian: bool, max_samples: int, seed: int) -> None:
        self.absmax = torch.zeros(k) if absmax else None
        self.hessian = torch.zeros(k, k) if hessian else None
        self.tokens = 0
        self.max_samples = max_samples
        self.seed = seed
        self.rows = torch.zeros(0, k)
        self.keys = torch.zeros(0, dtype=torch.float64)
        self.pos = torch.zeros(0, dtype=torch.int64)
        self.start(0)

    def start(self, batch: int) -> None:
        """The next rows come from calibration batch `batch` (its global index)."""
        self.batch, self.row, self.gen = batch, 0, None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float32).cpu()
        if not bool(torch.isfinite(x).all()):
            raise QCompilerError("calibration activations contain NaN/Inf; the model overflows "
                                 "on the calibration data (check the checkpoint)")
        self.tokens += x.shape[0]
        if self.absmax is not None:
            self.absmax = torch.maximum(self.absmax, x.abs().amax(0))
        if self.hessian is not None:
            self.hessian.addmm_(x.T, x)  # our own accumulator, not a program tensor
        if self.max_samples:
            # reservoir sampling by random keys: keep the rows with the largest keys; the keys
            # of a batch depend only on (input, batch), so any split of the batches over
            # processes keeps the same rows (module docstring)
            if self.gen is None:
                self.gen = torch.Generator().manual_seed(
                    (self.seed * 1_000_003 + self.batch) % (1 << 62))
            n = x.shape[0]
            keys = torch.rand(n, generator=self.gen, dtype=torch.float64)
            pos = self.batch * ROW_STRIDE + self.row + torch.arange(n)
            self.row += n
            self.merge(x, keys, pos)

    def merge(self, rows: torch.Tensor, keys: torch.Tensor, pos: torch.Tensor) -> None:
        """Add rows with their keys and positions; keep the `max_samples` largest keys."""
        rows, keys, pos = torch.cat([self.rows, rows]), torch.cat([self.keys, keys]), \
            torch.cat([self.pos, pos])
        if rows.shape[0] > self.max_samples:
            top = _top_keys(keys, pos, self.max_samples)
            rows, keys, pos = rows[top], keys[top], pos[top]
        self.rows, self.keys, self.pos = rows.clone(), keys, pos


ROW_STRIDE = 1 << 40  # positions: batch index × this + row within the batch


def _top_keys(keys: torch.Tensor, pos: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` largest keys (ties: lower position first), in position order."""
    by_pos = torch.argsort(pos)
    order = torch.sort(keys[by_pos], descending=True, stable=True).indices
    pick = by_pos[order[:count]]
    return pick[torch.argsort(pos[pick])]


def _reduce(watch: dict[Any, _Accumulator], group: Any) -> None:
    """Combine every rank's accumulators in place (sums, maxima, merged row samples)."""
    from qcompiler.distributed import all_reduce, gather_tensors

    accs = list(watch.values())
    tokens = all_reduce(torch.tensor([a.tokens for a in accs], dtype=torch.int64), "sum", group)
    for acc, count in zip(accs, tokens.tolist()):
        acc.tokens = int(count)
        if acc.hessian is not None:
            acc.hessian = all_reduce(acc.hessian, "sum", group)
        if acc.absmax is not None:
            acc.absmax = all_reduce(acc.absmax, "max", group)
    if accs and accs[0].max_samples:
        mine = {}
        for i, acc in enumerate(accs):
            mine.update({f"{i}/rows": acc.rows, f"{i}/keys": acc.keys, f"{i}/pos": acc.pos})
        parts = gather_tensors(mine, group)
        for i, acc in enumerate(accs):
            acc.rows, acc.keys, acc.pos = acc.rows[:0], acc.keys[:0], acc.pos[:0]
            for part in parts:  # rank order; the kept rows do not depend on it
                acc.merge(part[f"{i}/rows"], part[f"{i}/keys"], part[f"{i}/pos"])


class _StatsInterpreter(fx.Interpreter):
    """Runs the graph, feeding each watched linear's input to its accumulator first."""

    def __init__(self, gm: fx.GraphModule, watch: dict[fx.Node, _Accumulator]) -> None:
        super().__init__(gm)
        self.watch = watch

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        acc = self.watch.get(n)
        if acc is not None:
            acc.add(result)
        return result


def linear_inputs(program: Any, layers: Iterable[str] | None = None) -> dict[str, fx.Node]:
    """Layer name -> the node its linear reads, in graph order (layers=None: every linear)."""
    wanted = None if layers is None else set(layers)
    out: dict[str, fx.Node] = {}
    for node in program.linears():
        layer = str(node.args[1].target).removesuffix(".weight")
        if wanted is None or layer in wanted:
            out[layer] = node.args[0]
    if wanted is not None and wanted - set(out):
        missing = sorted(wanted - set(out))
        raise QCompilerError(f"no linear layer named {missing[0]} in the program")
    return out


def collect_linear_stats(program: Any, batches: Sequence[Batch],
                         layers: Iterable[str] | None = None, *, absmax: bool = True,
                         hessian: bool = False, max_samples: int = 0, ctx: Any = None,
                         budget_bytes: int = HESSIAN_BUDGET_BYTES) -> dict[str, LinearStats]:
    """Statistics of each linear's input over `batches`, keyed by layer name (module docstring).

    Returns every requested layer at once; a pass that wants its memory bounded by the budget
    iterates `iter_linear_stats` instead and frees each chunk after using it."""
    out: dict[str, LinearStats] = {}
    for chunk in iter_linear_stats(program, batches, layers, absmax=absmax, hessian=hessian,
                                   max_samples=max_samples, ctx=ctx, budget_bytes=budget_bytes):
        out.update(chunk)
    return out


@memoized  # off unless a caller opts in (qcompiler/stats_memo.py: benches reuse statistics)
def iter_linear_stats(program: Any, batches: Sequence[Batch],
                      layers: Iterable[str] | None = None, *, absmax: bool = True,
                      hessian: bool = False, max_samples: int = 0, ctx: Any = None,
                      budget_bytes: int = HESSIAN_BUDGET_BYTES) -> Iterator[dict[str, LinearStats]]:
    """`collect_linear_stats` a chunk of layers at a time: each chunk's Hessians fit in
    `budget_bytes`, and the batches run once per chunk."""
    if program.meta.get("lazy_tensors"):
        raise QCompilerError("calibration runs the model and needs its weights in memory; "
                             "compile without streaming (stream=False)")
    inputs = linear_inputs(program, layers)
    nodes = list(dict.fromkeys(inputs.values()))  # unique input nodes, graph order
    width = {n: _width(program, n) for n in nodes}
    cfg = getattr(ctx, "calibration", None) if ctx is not None else None
    seed = getattr(cfg, "seed", 0)
    progress = ctx.progress if ctx is not None else (lambda items, **_: items)
    group, ids, local = _local_batches(batches, cfg)
    for chunk in _chunks(nodes, width, hessian, max_samples, budget_bytes):
        watch = {n: _Accumulator(width[n], absmax, hessian, max_samples, seed + nodes.index(n))
                 for n in chunk}
        for index, batch in progress(list(zip(ids, local)), total=len(local), desc="calibrate"):
            args = batch if isinstance(batch, (tuple, list)) else (batch,)
            for acc in watch.values():
                acc.start(index)
            with torch.no_grad():
                _StatsInterpreter(program.gm, watch).run(*args)
        if group is not None:
            _reduce(watch, group)
        # the caller alone holds the statistics while this generator waits: it may free each
        # once used (GPTQ factors a Hessian in its own storage, then drops it)
        acc = None  # the loop variable would keep the last accumulator (its Hessian) alive
        box = [watch]  # _take_stats empties it: the frame keeps no reference while suspended
        del watch
        yield _take_stats(box, inputs, max_samples)


def _take_stats(box: list[dict[fx.Node, _Accumulator]], inputs: dict[str, fx.Node],
                max_samples: int) -> dict[str, LinearStats]:
    """The chunk's statistics by layer; the accumulators leave `box` (no reference is kept)."""
    watch = box.pop()
    return {layer: LinearStats(watch[node].absmax, watch[node].hessian, watch[node].tokens,
                               watch[node].rows if max_samples else None)
            for layer, node in inputs.items() if node in watch}


def _local_batches(batches: Sequence[Batch], cfg: Any) -> tuple[Any, list[int], list[Batch]]:
    """(process group or None, global indices, batches) this process runs: all of them alone,
    its share over several processes (`cfg.shard`: the batches are that share already)."""
    from qcompiler.distributed import current, share

    group = current()
    shard = getattr(cfg, "shard", None)
    if shard is not None and len(shard) == len(batches):
        return group, list(shard), list(batches)
    ids = share(len(batches), group)
    return group, ids, [batches[i] for i in ids]


def _width(program: Any, node: fx.Node) -> int:
    """K of the linears reading `node` (their weight's last dimension)."""
    for user in node.users:
        if user.target == torch.ops.aten.linear.default and user.args[0] is node:
            w = user.args[1]
            if isinstance(w, fx.Node) and w.op == "get_attr":
                return int(program.get_tensor(str(w.target)).shape[-1])
    raise QCompilerError(f"cannot tell the width of linear input {node.name}")


def _chunks(nodes: list[fx.Node], width: dict[fx.Node, int], hessian: bool, max_samples: int,
            budget: int) -> list[list[fx.Node]]:
    """Split input nodes so each chunk's statistics (Hessians, row samples) fit in `budget`."""
    if not nodes:
        return []
    chunks: list[list[fx.Node]] = [[]]
    used = 0
    for n in nodes:
        size = 4 * width[n] * ((width[n] if hessian else 0) + max_samples)
        if chunks[-1] and used + size > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(n)
        used += size
    return chunks

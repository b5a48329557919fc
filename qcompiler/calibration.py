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
            out += [sampling.sample_sequence(program, vocab, cfg.seqlen, cfg.seed + i, bos)
                    for i in range(cfg.sampled)]
            sampling.release(program)
        elif cfg.sampled:
            for i in range(cfg.sampled):
                out += evaluate.random_sequences(vocab, 1, cfg.seqlen, cfg.seed + i, tokenizer)
        return out
    if program.kind == "causal-lm":
        bos = config.get("bos_token_id")
        out = [sampling.sample_sequence(program, vocab, length, cfg.seed + i, bos)
               for i, length in enumerate(lengths)]
        sampling.release(program)  # passes replace tensors next: do not keep the old ones
        return out
    tokenizer = program_tokenizer(program)
    out = []
    for i, length in enumerate(lengths):
        out += evaluate.random_sequences(vocab, 1, length, cfg.seed + i, tokenizer)
    return out


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
        self.rows: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None
        self.gen = torch.Generator().manual_seed(seed)

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
            # reservoir sampling by random keys: keep the rows with the largest keys
            keys = torch.rand(x.shape[0], generator=self.gen)
            rows = x if self.rows is None else torch.cat([self.rows, x])
            keys = keys if self.keys is None else torch.cat([self.keys, keys])
            if rows.shape[0] > self.max_samples:
                top = torch.topk(keys, self.max_samples).indices.sort().values
                rows, keys = rows[top], keys[top]
            self.rows, self.keys = rows.clone(), keys


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
    seed = getattr(getattr(ctx, "calibration", None), "seed", 0) if ctx is not None else 0
    progress = ctx.progress if ctx is not None else (lambda items, **_: items)
    for chunk in _chunks(nodes, width, hessian, max_samples, budget_bytes):
        watch = {n: _Accumulator(width[n], absmax, hessian, max_samples, seed + nodes.index(n))
                 for n in chunk}
        for batch in progress(batches, total=len(batches), desc="calibrate"):
            args = batch if isinstance(batch, (tuple, list)) else (batch,)
            with torch.no_grad():
                _StatsInterpreter(program.gm, watch).run(*args)
        yield {layer: LinearStats(watch[node].absmax, watch[node].hessian, watch[node].tokens,
                                  watch[node].rows)
               for layer, node in inputs.items() if node in watch}


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

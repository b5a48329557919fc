"""Quality of a quantized model against the original.

Decoders (`causal-lm`): for every position of every evaluation sequence, the KL divergence
KL(P_ref || P_quant) of the next-token distributions, reported as mean and 99th percentile (what
llama.cpp's `--kl-divergence` prints), the top-1 agreement (how often both pick the same token)
and, when real text is given, the perplexity of both models on it, the standard way: windows
of `seq_len` tokens, each starting with the tokenizer's BOS (qcompiler/text_data.py).

Encoders: the cosine similarity of the pooled embeddings, mean pooling over tokens as
sentence-transformers does for MiniLM, reported as mean and minimum over the samples.

Without text the evaluation still works offline on any model: decoders are evaluated on sequences
sampled from the reference model itself (seeded; temperature 1), encoders on random token
sequences (seeded). The same seed gives the same sequences, so numbers compare across formats.

The evaluation draws from its own seed stream (`seed + EVAL_SEED_OFFSET`), never the one the
calibration uses (`seed + i`, qcompiler/calibration.py): with a shared stream, the default
evaluation sequences were the calibration sequences (a decoder's 8 evaluation samples were
prefixes of its first 8 calibration samples, the same tokens from the same model and seed; an
encoder's first 2 random sequences sat inside calibration sequence 0), so calibrated pipelines
(gptq, clip, awq) were scored on the data they were fitted to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from qcompiler.errors import QCompilerError
from qcompiler.sampling import release, sample_sequence  # noqa: F401  (re-exported)
from qcompiler.text_data import describe, evaluation_windows

Model = Callable[[torch.Tensor], torch.Tensor]
EVAL_SEED_OFFSET = 1 << 20  # evaluation seeds never meet calibration's (seed + sample index)


@dataclass
class EvalResult:
    """The numbers `qcompile eval` prints; fields that do not apply to the model are None."""

    kind: str
    data: str  # "text", "sampled" (from the reference) or "random" (token ids)
    samples: int
    tokens: int
    text: str | None = None  # decoders on text: how the windows were cut (text_data.describe)
    window: int | None = None
    bos: str | None = None  # the BOS every text window starts with
    predicted_tokens: int | None = None  # tokens the perplexity averages over
    artifact_bytes: int | None = None  # weights.safetensors of the artifact (set by the CLI)
    fp16_bytes: int | None = None  # the same model's parameters at 2 bytes each
    bits_per_parameter: float | None = None  # 8 * artifact_bytes / parameters
    kl_mean: float | None = None
    kl_p99: float | None = None
    kl_max: float | None = None
    top1_agreement: float | None = None
    perplexity: float | None = None
    perplexity_reference: float | None = None
    cosine_mean: float | None = None
    cosine_min: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """A small two-column table for the terminal."""
        data = (f"text, {self.text}" if self.text else
                f"{self.data}, {self.samples} sequences, {self.tokens} tokens")
        rows = [("model kind", self.kind), ("data", data)]
        labels = [
            ("kl_mean", "KL divergence, mean"), ("kl_p99", "KL divergence, 99th pct"),
            ("kl_max", "KL divergence, max"), ("top1_agreement", "top-1 agreement"),
            ("perplexity", "perplexity (quantized)"),
            ("perplexity_reference", "perplexity (reference)"),
            ("cosine_mean", "embedding cosine, mean"), ("cosine_min", "embedding cosine, min"),
        ]
        for key, label in labels:
            value = getattr(self, key)
            if value is not None:
                rows.append((label, f"{value:.6f}"))
        if self.artifact_bytes is not None and self.fp16_bytes:
            rows.append(("artifact size", f"{self.artifact_bytes / 1e6:.2f} MB weights, "
                         f"{self.bits_per_parameter:.2f} bits per parameter "
                         f"({100 * self.artifact_bytes / self.fp16_bytes:.1f}% of the fp16 "
                         f"checkpoint, {self.fp16_bytes / 1e6:.2f} MB)"))
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows) + "\n"


def evaluate(quantized: Model, reference: Model, *, kind: str, vocab_size: int,
             text: str | None = None, tokenizer: Any = None, samples: int = 8,
             seq_len: int = 64, seed: int = 0, bos_token_id: int | None = None,
             bos: bool = True) -> EvalResult:
    """Compare `quantized` with `reference` (both ids [1, T] -> logits or hidden states).

    `bos_token_id` starts sampled sequences; `bos` says whether text windows start with the
    tokenizer's BOS."""
    if samples < 1 or seq_len < 2:
        raise QCompilerError("evaluation needs --samples >= 1 and --seq-len >= 2")
    if text is not None:
        if tokenizer is None:
            raise QCompilerError("--text needs a tokenizer, and neither the artifact nor the "
                                 "reference model has one; leave out --text to evaluate on "
                                 "sequences sampled from the reference")
        if kind == "causal-lm":
            cut = evaluation_windows(text, tokenizer, window=seq_len, count=samples, bos=bos)
            result = _compare_decoder(quantized, reference, cut.windows, "text",
                                      sum(int(w.shape[-1]) for w in cut.windows),
                                      with_perplexity=True)
            result.text, result.window = describe(cut), cut.window
            result.bos, result.predicted_tokens = cut.bos_token, cut.predicted
            return result
        sequences = text_sequences(text, tokenizer, samples=samples, seq_len=seq_len, kind=kind)
        data = "text"
    elif kind == "causal-lm":
        sequences = [sample_sequence(reference, vocab_size, seq_len,
                                     seed + EVAL_SEED_OFFSET + i, bos_token_id)
                     for i in range(samples)]
        release(reference)
        data = "sampled"
    else:
        sequences = random_sequences(vocab_size, samples, seq_len, seed + EVAL_SEED_OFFSET,
                                     tokenizer)
        data = "random"
    tokens = sum(int(s.shape[-1]) for s in sequences)
    if kind == "causal-lm":
        return _compare_decoder(quantized, reference, sequences, data, tokens,
                                with_perplexity=text is not None)
    return _compare_encoder(quantized, reference, sequences, data, tokens, kind)


def compare(quantized: Model, reference: Model, sequences: list[torch.Tensor], *,
            kind: str, data: str = "given", with_perplexity: bool = False) -> EvalResult:
    """`evaluate` on sequences the caller already has (benchmarks draw them once per model);
    `with_perplexity` for text windows (text_data.evaluation_windows)."""
    tokens = sum(int(s.shape[-1]) for s in sequences)
    if kind == "causal-lm":
        return _compare_decoder(quantized, reference, sequences, data, tokens,
                                with_perplexity=with_perplexity)
    return _compare_encoder(quantized, reference, sequences, data, tokens, kind)


# ---- data --------------------------------------------------------------------------------------
def random_sequences(vocab_size: int, samples: int, length: int, seed: int,
                     tokenizer: Any = None) -> list[torch.Tensor]:
    """Random token ids (seeded). With a tokenizer: ordinary tokens only (no special or
    `[unused]`-style ids), framed by its [CLS] ... [SEP] when it has them."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.arange(3, vocab_size)
    cls = sep = None
    if tokenizer is not None:
        specials = set(getattr(tokenizer, "all_special_ids", []) or [])
        tokens = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
        ordinary = [i for i, t in enumerate(tokens) if i not in specials and t is not None
                    and not (t.startswith("[") and t.endswith("]"))
                    and not (t.startswith("<") and t.endswith(">"))]
        if ordinary:
            pool = torch.tensor(ordinary)
        cls = getattr(tokenizer, "cls_token_id", None)
        sep = getattr(tokenizer, "sep_token_id", None)
    out = []
    for _ in range(samples):
        ids = pool[torch.randint(len(pool), (length,), generator=g)]
        if cls is not None and sep is not None:
            ids[0], ids[-1] = cls, sep
        out.append(ids[None])
    return out


def text_sequences(text: str, tokenizer: Any, *, samples: int, seq_len: int,
                   kind: str) -> list[torch.Tensor]:
    """One line per sample (encoders), or chunks of `seq_len` tokens as the tokenizer cuts them
    (decoders; only the first chunk gets the tokenizer's BOS: for perplexity use
    text_data.evaluation_windows, which `evaluate` does)."""
    if kind != "causal-lm":
        lines = [line.strip() for line in text.splitlines() if line.strip()][:samples]
        if not lines:
            raise QCompilerError("the --text file has no non-empty lines")
        return [tokenizer(line, return_tensors="pt", truncation=True,
                          max_length=seq_len)["input_ids"] for line in lines]
    ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
    chunks = [ids[i:i + seq_len] for i in range(0, len(ids) - 1, seq_len)]
    chunks = [c for c in chunks if len(c) >= 2][:samples]
    if not chunks:
        raise QCompilerError("the --text file has fewer than 2 tokens")
    return [c[None] for c in chunks]


def read_text(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise QCompilerError(f"cannot read --text {path}: {e.strerror}") from None


# ---- metrics -----------------------------------------------------------------------------------
def _compare_decoder(quantized: Model, reference: Model, sequences: list[torch.Tensor],
                     data: str, tokens: int, *, with_perplexity: bool) -> EvalResult:
    kls, agree, nll_q, nll_r = [], [], [], []
    with torch.no_grad():
        for ids in sequences:
            ref = torch.log_softmax(reference(ids)[0].double().cpu(), dim=-1)
            q = torch.log_softmax(quantized(ids)[0].double().cpu(), dim=-1)
            kls.append((ref.exp() * (ref - q)).sum(-1).clamp_min(0))
            agree.append(ref.argmax(-1) == q.argmax(-1))
            target = ids[0, 1:].cpu()
            nll_q.append(-q[:-1].gather(-1, target[:, None])[:, 0])
            nll_r.append(-ref[:-1].gather(-1, target[:, None])[:, 0])
    kl = torch.cat(kls)
    top1 = float(torch.cat(agree).double().mean())
    result = EvalResult("causal-lm", data, len(sequences), tokens,
                        kl_mean=float(kl.mean()), kl_p99=float(torch.quantile(kl, 0.99)),
                        kl_max=float(kl.max()), top1_agreement=top1)
    if with_perplexity:
        result.perplexity = float(torch.cat(nll_q).mean().exp())
        result.perplexity_reference = float(torch.cat(nll_r).mean().exp())
    return result


def _compare_encoder(quantized: Model, reference: Model, sequences: list[torch.Tensor],
                     data: str, tokens: int, kind: str) -> EvalResult:
    cosines = []
    with torch.no_grad():
        for ids in sequences:
            ref = _mean_pool(reference(ids))
            q = _mean_pool(quantized(ids))
            cosines.append(torch.nn.functional.cosine_similarity(ref, q, dim=-1))
    cos = torch.cat(cosines)
    return EvalResult(kind, data, len(sequences), tokens, cosine_mean=float(cos.mean()),
                      cosine_min=float(cos.min()))


def _mean_pool(hidden: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of [B, T, H] (no padding: every token counts), in float64."""
    hidden = hidden.double().cpu()
    return hidden.mean(dim=1) if hidden.dim() == 3 else hidden

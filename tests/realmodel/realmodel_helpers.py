"""Helpers for the real-text and export tests: a word-level tokenizer, text, the HF loop."""

from __future__ import annotations

import pytest


def word_tokenizer(bos: bool = True):
    """A word-level HF tokenizer over w0..w508 (ids 3..511), with BOS `<s>` = 1 or without."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "<s>", "</s>"] + [f"w{i}" for i in range(509)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                   bos_token="<s>" if bos else None, eos_token="</s>")


def word_text(lines: int, words_per_line: int = 20) -> str:
    """Deterministic text over the word vocabulary, `lines` lines (line i uses words near i)."""
    return "".join(" ".join(f"w{(7 * i + 3 * j) % 509}" for j in range(words_per_line)) + "\n"
                   for i in range(lines))


def hf_perplexity(model, windows) -> float:
    """The plain Hugging Face loop: mean token loss over every predicted token, exponentiated."""
    import math

    import torch

    nll, count = 0.0, 0
    with torch.no_grad():
        for ids in windows:
            loss = model(ids, labels=ids).loss  # mean over the T - 1 predicted tokens
            nll += float(loss) * (ids.shape[-1] - 1)
            count += ids.shape[-1] - 1
    return math.exp(nll / count)


def need_smollm2() -> None:
    """Skip (with the install command) when zoo:smollm2-135m's packages are absent."""
    from qcompiler import zoo_gguf

    why = zoo_gguf.missing()
    if why:
        pytest.skip(why)

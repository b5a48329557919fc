"""Real text for perplexity and calibration: the standard windows and the held-out split.

Perplexity the standard way: the whole text is tokenized once, without special tokens, and cut
into non-overlapping windows of `window` tokens; the loss runs over every predicted token. When
the tokenizer defines a BOS token (and `bos=True`), every window starts with it and carries
`window - 1` text tokens, all of them predicted (the first from BOS). Models trained with BOS at
the start of every document (Llama, Gemma) score several times worse on a window that lacks it,
which inflates perplexity and hides the differences between formats; before this rule only the
first window (the tokenizer's own BOS at the start of the text) had one. With `bos=False` a
window is `window` text tokens and its first token is not predicted.

Held-out split: one text file can serve both jobs. Evaluation (`qcompile eval --text FILE`)
reads windows from the start of the file; calibration (`qcompile --calib FILE`) reads only the
second half of its lines (`calibration_part`), so the two never share a line as long as the
evaluation windows stay in the first half, which `evaluation_windows` reports (`held_out`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qcompiler.errors import QCompilerError


@dataclass
class TextWindows:
    """Perplexity windows cut from a text, and how they were cut (printed by `qcompile eval`)."""

    windows: list[torch.Tensor]  # each [1, T], T <= window
    window: int
    bos_token: str | None  # the BOS every window starts with; None: no BOS
    bos_why_not: str  # why there is no BOS ("" when there is one)
    predicted: int  # tokens whose loss counts: sum of (T - 1)
    text_tokens: int  # tokens in the whole text
    held_out: bool  # every window lies in the first half of the lines (never calibrated on)


def split_lines(text: str) -> tuple[str, str]:
    """(first half of the lines, second half): evaluation reads the first, calibration the
    second. A one-line text is all second half, so calibration on it still has data."""
    lines = text.splitlines(keepends=True)
    mid = len(lines) // 2
    return "".join(lines[:mid]), "".join(lines[mid:])


def calibration_part(text: str) -> str:
    """The lines `--calib FILE` calibrates on: the second half, held out from evaluation."""
    return split_lines(text)[1]


def bos_of(tokenizer: Any) -> tuple[int | None, str | None]:
    """The tokenizer's BOS id and text, (None, None) when it defines none."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return None, None
    return int(bos_id), getattr(tokenizer, "bos_token", None) or str(bos_id)


def encode(tokenizer: Any, text: str) -> torch.Tensor:
    """Token ids of `text`, 1-D, without the BOS a tokenizer may put in front."""
    ids = torch.as_tensor(tokenizer(text, return_tensors="pt")["input_ids"]).reshape(-1)
    bos_id, _ = bos_of(tokenizer)
    if bos_id is not None and len(ids) and int(ids[0]) == bos_id:
        ids = ids[1:]
    return ids


def evaluation_windows(text: str, tokenizer: Any, *, window: int, count: int,
                       bos: bool = True) -> TextWindows:
    """Up to `count` consecutive non-overlapping windows from the start of `text`."""
    if window < 2 or count < 1:
        raise QCompilerError("perplexity needs --seq-len >= 2 and --samples >= 1")
    ids = encode(tokenizer, text)
    bos_id, bos_token = bos_of(tokenizer) if bos else (None, None)
    why_not = ("" if bos_id is not None else
               "turned off" if not bos else "the tokenizer defines none")
    step = window - 1 if bos_id is not None else window
    windows: list[torch.Tensor] = []
    for start in range(0, len(ids), step):
        chunk = ids[start:start + step]
        if bos_id is not None:
            chunk = torch.cat([torch.tensor([bos_id], dtype=ids.dtype), chunk])
        if len(chunk) < 2:
            break
        windows.append(chunk[None].clone())
        if len(windows) == count:
            break
    if not windows:
        raise QCompilerError("the --text file has fewer than 2 tokens; give it more text")
    used = sum(int(w.shape[-1]) for w in windows) - (len(windows) if bos_id is not None else 0)
    first_half = split_lines(text)[0]
    held_out = used <= len(encode(tokenizer, first_half)) if first_half else False
    return TextWindows(windows=windows, window=window, bos_token=bos_token, bos_why_not=why_not,
                       predicted=sum(int(w.shape[-1]) - 1 for w in windows),
                       text_tokens=len(ids), held_out=held_out)


def describe(w: TextWindows) -> str:
    """One line for the eval table: window length, BOS, predicted tokens, hold-out."""
    bos = f"each starts with BOS {w.bos_token}" if w.bos_token else f"no BOS: {w.bos_why_not}"
    held = ("first half of the lines, held out from --calib" if w.held_out else
            "reaching the second half of the lines, which --calib on this file calibrates on")
    return (f"{len(w.windows)} windows of {w.window} tokens ({bos}), {w.predicted} predicted "
            f"tokens of {w.text_tokens}; {held}")

"""Loading a Hugging Face tokenizer from local files, for any layer that has a model directory.

Calibration (token sampling from text), the artifact loader and the eval CLI all need it; it
lives below them so that calibration does not import the artifact runtime.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def load_tokenizer(directory: Path) -> Any:
    """A transformers tokenizer from local files; None when none can be built."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception:  # no usable tokenizer files: callers fall back to token ids
        return None

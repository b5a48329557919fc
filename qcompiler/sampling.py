"""Sampling sequences from a causal LM (temperature 1, seeded), with a KV cache when possible.

Calibration (qcompiler/calibration.py) and evaluation (qcompiler/evaluate.py) draw sequences
from the model itself. The plain loop runs the whole prefix through the model for every new
token: a length-L sequence costs L(L+1)/2 token-forwards, O(L^2) (16 x 128 tokens from a 0.5B
model: ~130k token-forwards, tens of minutes on a CPU). With a KV cache each token is run once,
O(L), but a captured `Program` has no cache: its graph maps the whole sequence to logits.

Fast path: when the model is a `Program` of kind "causal-lm" whose `meta["config"]` is a
Hugging Face config that transformers can build, we build that HF model on the meta device and
attach the program's own tensors to it by name, without copying (every parameter and buffer the
HF model has must exist in the program with the same shape and dtype; tied names may share one
program tensor). Then we check, once per program, that the HF model computes what the program
computes: on a seeded probe sequence of PROBE_LEN tokens, the program's logits must equal both
HF's no-cache logits and its token-by-token KV-cache logits (torch.allclose, rtol RTOL and atol
RTOL times the largest |logit|). A pass that changed the function (a rotation, quantized ops, a
lowered graph) fails the check or the name/shape match, and the program gets the fallback.
The decision and the built module are cached per program (keyed by its GraphModule, weakly)
together with a fingerprint of its code and tensors, so a program changed later is checked
again; `release` drops the entry (calibration does, so a pass that replaces weights does not
keep the old ones alive through the cached module).

Fallback: the plain loop, the whole prefix through the model for every token (any callable).

Both paths draw the same way (first token BOS or seeded, then temperature-1 multinomial with
one seeded generator), so the fast path samples from the same distribution; its logits differ
from the program's only by float rounding, which can rarely flip a draw.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any, Callable

import torch

from qcompiler.program import Program

Model = Callable[[torch.Tensor], torch.Tensor]
Step = Callable[[torch.Tensor], torch.Tensor]  # the new ids [1, n] -> last position's logits [V]
PROBE_LEN = 12
PROBE_SEED = 0
RTOL = 1e-4

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # gm -> (fingerprint, sampler)


def sample_sequence(model: Model, vocab_size: int, length: int, seed: int,
                    bos_token_id: int | None = None) -> torch.Tensor:
    """A sequence drawn from the model (temperature 1), starting at BOS or a seeded token."""
    return _sample(_stepper(model), vocab_size, length, seed, bos_token_id, None)


def sample_with_logits(model: Model, vocab_size: int, length: int, seed: int,
                       bos_token_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_sequence` plus the logits each draw used ([length - 1, V], float32)."""
    kept: list[torch.Tensor] = []
    ids = _sample(_stepper(model), vocab_size, length, seed, bos_token_id, kept)
    return ids, torch.stack(kept) if kept else torch.empty(0, vocab_size)


def _sample(step: Step, vocab_size: int, length: int, seed: int, bos_token_id: int | None,
            kept: list[torch.Tensor] | None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    first = bos_token_id if bos_token_id is not None else int(torch.randint(vocab_size, (1,),
                                                                            generator=g))
    ids = new = torch.tensor([[first]], dtype=torch.long)
    with torch.no_grad():
        while ids.shape[-1] < length:
            logits = step(new).float().cpu()
            if kept is not None:
                kept.append(logits)
            probs = torch.softmax(logits, dim=-1)
            new = torch.multinomial(probs, 1, generator=g)[None]
            ids = torch.cat([ids, new], dim=-1)
    return ids


def _stepper(model: Model) -> Step:
    sampler = fast_sampler(model)
    return sampler.stepper() if sampler is not None else _prefix_stepper(model)


def _prefix_stepper(model: Model) -> Step:
    """The fallback: the whole prefix through the model for every token."""
    ids: torch.Tensor | None = None

    def step(new: torch.Tensor) -> torch.Tensor:
        nonlocal ids
        ids = new if ids is None else torch.cat([ids, new], dim=-1)
        return model(ids)[0, -1]

    return step


class FastSampler:
    """An HF causal LM sharing a program's tensors, stepped with its KV cache."""

    def __init__(self, hf: torch.nn.Module) -> None:
        self.hf = hf
        self.device = next(hf.parameters()).device
        # transformers 5 renames `past_key_values` to `cache` (the old name warns, then goes)
        params = inspect.signature(hf.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"

    def stepper(self) -> Step:
        past = None

        def step(new: torch.Tensor) -> torch.Tensor:
            nonlocal past
            with torch.no_grad():
                out = self.hf(input_ids=new.to(self.device), use_cache=True,
                              **{self.cache_arg: past})
            past = getattr(out, self.cache_arg)
            return out.logits[0, -1]

        return step


# ---- which path --------------------------------------------------------------------------------
def fast_sampler(model: Any) -> FastSampler | None:
    """The KV-cache sampler for `model`, or None when it gets the fallback (module docstring)."""
    if not isinstance(model, Program) or model.kind != "causal-lm":
        return None
    if not isinstance(model.meta.get("config"), dict):
        return None
    try:
        fingerprint = _fingerprint(model)
    except RuntimeError:  # inference-mode tensors have no version counter: no fast path
        return None
    hit = _CACHE.get(model.gm)
    if hit is not None and hit[0] == fingerprint:
        return hit[1]
    sampler = _build(model)
    _CACHE[model.gm] = (fingerprint, sampler)
    return sampler


def release(model: Any) -> None:
    """Forget the cached sampler of `model` (it holds the program's tensors of that time)."""
    if isinstance(model, Program):
        _CACHE.pop(model.gm, None)


def _fingerprint(program: Program) -> tuple:
    """Changes when the program's code or any of its tensors (object or in-place) changes."""
    tensors = tuple((name, id(t), t._version) for name, t in program.tensors().items())
    return hash(program.gm.code), tensors


def _build(program: Program) -> FastSampler | None:
    try:
        hf = _hf_model(program.meta["config"])
        if hf is None or not _attach(hf, program):
            return None
        sampler = FastSampler(hf)
        return sampler if _matches(sampler, program) else None
    except Exception:  # any failure to build or run the HF model means: use the plain loop
        return None


def _hf_model(config: dict[str, Any]) -> torch.nn.Module | None:
    """The HF causal LM described by `config`, float32, eval mode, its tensors on meta."""
    import transformers

    model_type = config.get("model_type")
    if model_type not in transformers.CONFIG_MAPPING:
        return None
    log = transformers.utils.logging
    previous = log.get_verbosity()
    log.set_verbosity_error()  # quiet while building, without changing the caller's setting
    try:
        hf_config = transformers.CONFIG_MAPPING[model_type].from_dict(dict(config))
        with torch.device("meta"):
            hf = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    finally:
        log.set_verbosity(previous)
    return hf.requires_grad_(False).eval()


def _attach(hf: torch.nn.Module, program: Program) -> bool:
    """Point every parameter and buffer of `hf` at the program's tensor of that name (no copy).

    Names HF ties together (one tensor under several names) may take any of the group's
    tensors the program has. A non-persistent buffer the program lacks (dead-code elimination
    drops e.g. the rotary `original_inv_freq`, which only dynamic RoPE reads) is filled with
    NaN: if HF reads it, the logits are NaN and the check in `_matches` fails. False when
    anything else is missing or has another shape or dtype."""
    slots = [*hf.named_parameters(remove_duplicate=False),
             *hf.named_buffers(remove_duplicate=False)]
    groups: dict[int, list[str]] = {}
    for name, t in slots:
        groups.setdefault(id(t), []).append(name)
    device = next(iter(program.tensors().values()), torch.empty(0)).device
    chosen: dict[str, torch.Tensor] = {}
    for name, t in slots:
        value = _program_tensor(program, [name, *groups[id(t)]])
        if value is None and _non_persistent(hf, name):
            value = torch.full(t.shape, float("nan"), dtype=t.dtype, device=device)
        if value is None or value.shape != t.shape or value.dtype != t.dtype:
            return False
        chosen[name] = value
    for name, value in chosen.items():
        _set(hf, name, value)
    return True


def _program_tensor(program: Program, names: list[str]) -> torch.Tensor | None:
    for name in names:
        if program.has_tensor(name):
            return program.get_tensor(name)
    return None


def _non_persistent(hf: torch.nn.Module, name: str) -> bool:
    owner_name, _, attr = name.rpartition(".")
    return attr in hf.get_submodule(owner_name)._non_persistent_buffers_set


def _set(hf: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = hf.get_submodule(owner_name)
    if attr in owner._parameters:
        if not isinstance(value, torch.nn.Parameter):
            value = torch.nn.Parameter(value, requires_grad=False)
        owner._parameters[attr] = value
    else:
        owner._buffers[attr] = value


def _matches(sampler: FastSampler, program: Program) -> bool:
    """HF (no cache, and step by step with its cache) gives the program's logits on a probe."""
    vocab = int(program.meta["config"]["vocab_size"])
    g = torch.Generator().manual_seed(PROBE_SEED)
    probe = torch.randint(vocab, (1, PROBE_LEN), generator=g)
    with torch.no_grad():
        want = program(probe.to(sampler.device))
        if not isinstance(want, torch.Tensor) or want.dim() != 3:
            return False
        want = want[0].float().cpu()
        full = sampler.hf(input_ids=probe.to(sampler.device), use_cache=False).logits[0]
        step = sampler.stepper()
        cached = torch.stack([step(probe[:, i:i + 1]) for i in range(PROBE_LEN)])
    return all(_close(got.float().cpu(), want) for got in (full, cached))


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    if got.shape != want.shape or not bool(torch.isfinite(want).all()):
        return False
    scale = float(want.abs().max())
    return torch.allclose(got, want, rtol=RTOL, atol=RTOL * max(scale, 1e-6))

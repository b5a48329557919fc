"""The llm-compressor side of bench/peers.py; runs in the peers venv, never imports qcompiler.

    <venv>/bin/python bench/peers_worker.py --model DIR --calib calib.safetensors \
        --method gptq --group 32 --out dequantized.safetensors

Loads the Hugging Face checkpoint DIR (float32), calibrates llm-compressor's `oneshot` on the
token sequences of `--calib` (safetensors, one int64 [1, T] tensor per sequence, named
seq000, seq001, ...; the same tokens qcompiler calibrates on) and writes every quantized
linear's DEQUANTIZED weight (float32, named like the checkpoint's `<layer>.weight`) to `--out`
as safetensors: the evaluation happens on the qcompiler side, with one evaluator for both.
Settings: symmetric INT4, per-group scales of `--group` along K, lm_head kept in float (as
qcompiler's default skip list does); `gptq` is GPTQModifier (static act-order, block 128,
dampening 0.01, the library's defaults), `rtn` is QuantizationModifier (min-max observer).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def scheme(group: int) -> dict:
    return {"group_0": {"targets": ["Linear"], "weights": {
        "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
        "group_size": group}}}


class NoProcessor:
    """Stands in for a tokenizer: the calibration tokens come ready-made."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--calib", required=True)
    p.add_argument("--method", choices=("rtn", "gptq"), required=True)
    p.add_argument("--group", type=int, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    import llmcompressor
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    calib = load_file(args.calib)
    seqs = [calib[k][0].tolist() for k in sorted(calib)]
    # A ready DataLoader: no tokenizer needed (the zoo checkpoints ship none), no shuffling.
    rows = [{"input_ids": torch.tensor([s]), "attention_mask": torch.ones(1, len(s),
                                                                           dtype=torch.long)}
            for s in seqs]
    loader = torch.utils.data.DataLoader(rows, batch_size=None, shuffle=False)
    groups = scheme(args.group)
    if args.method == "gptq":
        recipe = GPTQModifier(config_groups=groups, ignore=["lm_head"])
    else:
        recipe = QuantizationModifier(config_groups=groups, ignore=["lm_head"])
    oneshot(model=model, dataset=loader, recipe=recipe, processor=NoProcessor(),
            num_calibration_samples=len(seqs), max_seq_length=max(len(s) for s in seqs),
            shuffle_calibration_samples=False)

    out, checks = {}, {}
    for name, module in model.named_modules():
        scale = getattr(module, "weight_scale", None)
        if not isinstance(module, torch.nn.Linear) or scale is None:
            continue
        qargs = module.quantization_scheme.weights
        w = module.weight.detach().to(torch.float32)
        zp = getattr(module, "weight_zero_point", None)
        deq = fake_quantize(w, scale, zp if zp is not None else torch.zeros_like(scale), qargs)
        # GPTQ leaves the weight already on its grid; RTN leaves the fp weight: either way the
        # fake-quantized weight is what the compressed checkpoint decodes to.
        checks[name] = float((deq - w).abs().max())
        out[f"{name}.weight"] = deq.contiguous()
    save_file(out, args.out, metadata={
        "llmcompressor": llmcompressor.__version__, "torch": torch.__version__,
        "max_abs_change_by_fake_quant": json.dumps(checks)})
    print(json.dumps({"layers": len(out), "llmcompressor": llmcompressor.__version__,
                      "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

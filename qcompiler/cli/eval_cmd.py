"""`qcompile eval OUT --reference MODEL`: how far the compiled model is from the original.

    qcompile eval out/minilm-razer4 --reference zoo:minilm
    qcompile eval out/llama-int4 --reference path/to/llama --text wiki.txt --json eval.json

Decoders: KL divergence of next-token distributions (mean, 99th percentile), top-1 agreement,
and perplexity when --text is given; encoders: cosine of mean-pooled embeddings. Without --text
the sequences are sampled from the reference model (decoders) or random (encoders), seeded.

Perplexity is the standard one (qcompiler/text_data.py): --samples non-overlapping windows of
--seq-len tokens from the start of the text, every window starting with the tokenizer's BOS
(--no-bos: none), loss over every predicted token; the table says how the text was cut and
whether the windows stayed in the first half of the file's lines, which `qcompile --calib`
on the same file never calibrates on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from qcompiler.cli import common
from qcompiler.errors import QCompilerError, UsageError


def build_parser() -> common.ArgumentParser:
    p = common.ArgumentParser(
        prog="qcompile eval",
        description="Compare a compiled artifact with the unquantized model.")
    p.add_argument("artifact", metavar="OUT", help="artifact directory written by qcompile -o")
    p.add_argument("--reference", "-r", metavar="MODEL",
                   help="the original model (default: the source recorded in the manifest)")
    p.add_argument("--text", metavar="FILE", help="evaluate on this text (adds perplexity)")
    p.add_argument("--samples", type=int, default=8,
                   help="number of sequences (with --text: windows) (default 8)")
    p.add_argument("--seq-len", type=int, default=64,
                   help="tokens per sequence (with --text: window length) (default 64)")
    p.add_argument("--no-bos", action="store_true",
                   help="with --text: do not start each window with the tokenizer's BOS")
    p.add_argument("--seed", type=int, default=0, help="seed for sampled/random sequences")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--json", metavar="FILE", help="also write the numbers as JSON to FILE")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a pickled reference module (runs code from the file)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more output on stderr")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the table")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "eval":
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    common.quiet_libraries()
    return common.run_main(lambda: _eval(args), lambda: args.verbose)


def _eval(args) -> int:
    from qcompiler.capture import capture
    from qcompiler.evaluate import evaluate, read_text
    from qcompiler.runtime import load, load_tokenizer, move_program

    if args.samples < 1 or args.seq_len < 2:
        raise UsageError("--samples must be >= 1 and --seq-len >= 2")
    model = load(args.artifact, device=args.device)
    reference_name = args.reference or model.manifest.get("model", {}).get("source")
    if not reference_name:
        raise UsageError("say which model to compare with: --reference MODEL")
    reference = move_program(capture(reference_name, trust_pickle=args.trust_pickle), args.device)
    _check_match(model, reference, reference_name)
    tokenizer = model.tokenizer()
    if tokenizer is None and reference.meta.get("model_dir"):
        tokenizer = load_tokenizer(Path(reference.meta["model_dir"]))
    config = reference.meta.get("config") or {}
    vocab = config.get("vocab_size") or int(reference.example_inputs[0].max()) + 1
    text = read_text(args.text) if args.text else None
    seq_len = min(args.seq_len, model.max_length)
    device = model.device

    def run_reference(ids):
        return reference(ids.to(device))

    result = evaluate(model, run_reference, kind=model.kind, vocab_size=vocab, text=text,
                      tokenizer=tokenizer, samples=args.samples, seq_len=seq_len,
                      seed=args.seed, bos_token_id=config.get("bos_token_id"),
                      bos=not args.no_bos)
    _add_size(result, Path(args.artifact), reference)
    fmt = model.manifest.get("format") or "?"
    sys.stdout.write(f"{args.artifact} ({fmt}) vs {reference_name}\n{result.table()}")
    if args.json:
        payload = {"artifact": str(args.artifact), "format": fmt, "reference": reference_name,
                   "seq_len": seq_len, "seed": args.seed, **result.to_dict()}
        try:
            Path(args.json).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        except OSError as e:
            raise QCompilerError(f"cannot write {args.json}: {e.strerror}") from None
    return common.EXIT_OK


def _add_size(result, directory: Path, reference) -> None:
    """Artifact weights against the fp16 checkpoint (2 bytes per parameter, tied embeddings
    counted once) and the whole model's bits per parameter."""
    from qcompiler.artifact import WEIGHTS

    try:
        size = (directory / WEIGHTS).stat().st_size
    except OSError:
        return
    tensors = reference.tensors()
    tied = (reference.meta.get("config") or {}).get("tie_word_embeddings")
    if tied and "lm_head.weight" in tensors and "model.embed_tokens.weight" in tensors:
        del tensors["lm_head.weight"]  # a tied copy kept under its own name: count it once
    seen = {(t.data_ptr(), t.numel()): t.numel() for t in tensors.values()
            if t.is_floating_point()}
    params = sum(seen.values())
    if params:
        result.artifact_bytes, result.fp16_bytes = size, 2 * params
        result.bits_per_parameter = 8 * size / params


def _check_match(model, reference, name: str) -> None:
    """The reference must be the model the artifact was compiled from (same kind and outputs)."""
    import torch

    if reference.kind != model.kind:
        raise QCompilerError(f"{name} is of kind '{reference.kind}' but the artifact is "
                             f"'{model.kind}'; pass the model it was compiled from")
    ids = reference.example_inputs[0][:1, :4].to(model.device)
    with torch.no_grad():
        a, b = model(ids), reference(ids)
    if tuple(a.shape) != tuple(b.shape):
        raise QCompilerError(f"{name} does not match the artifact: outputs of shape "
                             f"{tuple(b.shape)} vs {tuple(a.shape)}; pass the model it was "
                             "compiled from")


if __name__ == "__main__":
    raise SystemExit(main())

"""`qcompile run OUT --prompt "..."`: greedy generation with a compiled decoder.

    qcompile run out/stories-razer4 --ids 1,403,407 --max-new-tokens 20
    qcompile run out/llama-int4 --prompt "Once upon a time" --device cuda

Prints the prompt and its continuation (or the token ids with --ids) to stdout.
"""

from __future__ import annotations

import sys

from qcompiler.cli import common
from qcompiler.errors import QCompilerError, UsageError


def build_parser() -> common.ArgumentParser:
    p = common.ArgumentParser(prog="qcompile run",
                              description="Generate text greedily with a compiled decoder.")
    p.add_argument("artifact", metavar="OUT", help="artifact directory written by qcompile -o")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="text to continue (needs a tokenizer in the artifact)")
    src.add_argument("--ids", help="comma-separated prompt token ids, e.g. 1,403,407")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (default 32)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more output on stderr")
    p.add_argument("-q", "--quiet", action="store_true", help="no notes on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "run":
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    common.quiet_libraries()
    return common.run_main(lambda: _run(args), lambda: args.verbose)


def _run(args) -> int:
    import torch

    from qcompiler.runtime import load

    if args.max_new_tokens < 0:
        raise UsageError("--max-new-tokens must be >= 0")
    model = load(args.artifact, device=args.device)
    if model.kind != "causal-lm":
        raise QCompilerError(f"{args.artifact} is not a decoder (kind '{model.kind}'); "
                             "'qcompile run' generates text with decoders only")
    tokenizer = model.tokenizer()
    if args.ids is not None:
        try:
            ids = [int(t) for t in args.ids.split(",") if t.strip()]
        except ValueError:
            raise UsageError(f"--ids expects comma-separated integers, got '{args.ids}'") from None
        vocab = model.config.get("vocab_size")
        if not ids or (vocab and any(not 0 <= t < vocab for t in ids)):
            raise UsageError(f"--ids must be token ids in [0, {vocab})")
        prompt = torch.tensor([ids], dtype=torch.long)
    else:
        if tokenizer is None:
            raise QCompilerError(f"{args.artifact} has no tokenizer; give the prompt as token "
                                 "ids with --ids 1,2,3")
        prompt = tokenizer(args.prompt, return_tensors="pt")["input_ids"]
    eos = model.config.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos
    out = model.generate(prompt.to(model.device), args.max_new_tokens,
                         eos if isinstance(eos, int) else None)
    if args.ids is not None or tokenizer is None:
        sys.stdout.write(",".join(str(int(t)) for t in out[0]) + "\n")
    else:
        sys.stdout.write(tokenizer.decode(out[0], skip_special_tokens=True) + "\n")
    return common.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())

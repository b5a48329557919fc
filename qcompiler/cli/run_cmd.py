"""`qcompile run OUT --prompt "..."`: generation with a compiled decoder (KV cache, batched).

    qcompile run out/stories-razer4 --ids 1,403,407 --max-new-tokens 20
    qcompile run out/llama-int4 --prompt "Once upon a time" --device cuda
    qcompile run out/llama-int4 --batch-file prompts.txt --do-sample --top-p 0.9 --seed 0
    qcompile run out/llama-int4 --print-decode-ir

One prompt streams its continuation to stdout as tokens come (text, or comma-separated ids with
--ids or without a tokenizer). --batch-file runs its lines (text; comma-separated ids when the
artifact has no tokenizer) as one left-padded batch and prints one completion per line.
--print-decode-ir prints the KV-cache decode program (qcompiler/decode_program.py) and exits.
"""

from __future__ import annotations

import sys
from pathlib import Path

from qcompiler.cli import common
from qcompiler.errors import QCompilerError, UsageError


def build_parser() -> common.ArgumentParser:
    p = common.ArgumentParser(prog="qcompile run",
                              description="Generate text with a compiled decoder.")
    p.add_argument("artifact", metavar="OUT", help="artifact directory written by qcompile -o")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="text to continue (needs a tokenizer in the artifact)")
    src.add_argument("--ids", help="comma-separated prompt token ids, e.g. 1,403,407")
    src.add_argument("--batch-file", metavar="FILE", help="one prompt per line, run as a batch")
    src.add_argument("--print-decode-ir", action="store_true",
                     help="print the KV-cache decode program's IR and exit")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (default 32)")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k likeliest tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
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

    from qcompiler.generation import check_inputs
    from qcompiler.runtime import load

    if args.prompt is None and args.ids is None and args.batch_file is None \
            and not args.print_decode_ir:
        raise UsageError("give a prompt: --prompt TEXT, --ids 1,2,3 or --batch-file FILE")
    if args.max_new_tokens < 0:
        raise UsageError("--max-new-tokens must be >= 0")
    model = load(args.artifact, device=args.device)
    if model.kind != "causal-lm":
        raise QCompilerError(f"{args.artifact} is not a decoder (kind '{model.kind}'); "
                             "'qcompile run' generates text with decoders only")
    if args.print_decode_ir:
        return _print_decode_ir(model, args.artifact)
    tokenizer = model.tokenizer()
    prompts = _prompts(args, model, tokenizer)
    ids, mask = _left_pad(prompts, model.config.get("pad_token_id"))
    options = dict(do_sample=args.do_sample, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, attention_mask=mask.to(model.device),
                   generator=torch.Generator(model.device).manual_seed(args.seed))
    check_inputs(model, ids, mask)  # before anything is printed
    as_ids = args.ids is not None or tokenizer is None
    if len(prompts) == 1:
        stream = _Stream(tokenizer, prompts[0], as_ids)
        model.generate(ids.to(model.device), args.max_new_tokens, streamer=stream, **options)
        stream.end()
        return common.EXIT_OK
    out = model.generate(ids.to(model.device), args.max_new_tokens, **options)
    eos = set(_eos(model.config))
    for row, prompt in zip(out, prompts):
        new = row[ids.shape[1]:].tolist()
        for i, t in enumerate(new):
            if t in eos:
                new = new[:i + 1]
                break
        tokens = prompt + new
        line = (",".join(str(t) for t in tokens) if as_ids
                else tokenizer.decode(tokens, skip_special_tokens=True).replace("\n", " "))
        sys.stdout.write(line + "\n")
    return common.EXIT_OK


def _prompts(args, model, tokenizer) -> list[list[int]]:
    """Token id lists, one per prompt."""
    if args.ids is not None:
        return [_parse_ids(args.ids, "--ids")]
    if args.prompt is not None:
        if tokenizer is None:
            raise QCompilerError(f"{args.artifact} has no tokenizer; give the prompt as token "
                                 "ids with --ids 1,2,3")
        return [tokenizer(args.prompt)["input_ids"]]
    path = Path(args.batch_file)
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read --batch-file {path}: {e}") from None
    lines = [ln for ln in lines if ln]
    if not lines:
        raise UsageError(f"--batch-file {path} has no prompts (one per line)")
    if tokenizer is None:
        return [_parse_ids(ln, f"{path} (no tokenizer in the artifact)") for ln in lines]
    return [tokenizer(ln)["input_ids"] for ln in lines]


def _parse_ids(text: str, where: str) -> list[int]:
    try:
        ids = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"{where} expects comma-separated integers, got '{text}'") from None
    if not ids:
        raise UsageError(f"{where} has no token ids")
    return ids


def _left_pad(prompts: list[list[int]], pad: int | None):
    import torch

    width = max(len(p) for p in prompts)
    pad = pad if isinstance(pad, int) else 0
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids, mask


def _eos(config: dict) -> list[int]:
    eos = config.get("eos_token_id")
    return [e for e in (eos if isinstance(eos, list) else [eos]) if isinstance(e, int)]


class _Stream:
    """Writes one sequence's tokens to stdout as they come: ids, or the text they add."""

    def __init__(self, tokenizer, prompt: list[int], as_ids: bool):
        self.tokenizer, self.as_ids = tokenizer, as_ids
        self.tokens = list(prompt)
        self.shown = "" if as_ids else tokenizer.decode(prompt, skip_special_tokens=True)
        self._write(",".join(str(t) for t in prompt) if as_ids else self.shown)

    def __call__(self, new) -> None:
        token = int(new[0])
        self.tokens.append(token)
        if self.as_ids:
            self._write(f",{token}")
            return
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.startswith(self.shown):
            self._write(text[len(self.shown):])
            self.shown = text

    def end(self) -> None:
        self._write("\n")

    @staticmethod
    def _write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()


def _print_decode_ir(model, artifact: str) -> int:
    from qcompiler.ir import print_program
    from qcompiler.program import Program

    decoder = model.decoder(dequantize_weights=False)
    if decoder is None:
        raise QCompilerError(f"{artifact} has no KV-cache decode path (only RoPE decoders such "
                             "as Llama, Qwen2 and Mistral have one); generate re-runs the prefix")
    program = Program(decoder.gm, (), decoder.input_names, [], "causal-lm")
    sys.stdout.write(print_program(program).replace("@main(", "@decode(", 1))
    return common.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())

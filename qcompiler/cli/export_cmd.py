"""`qcompile export OUT --to compressed-tensors -o DIR`: hand a compiled model to a serving engine.

    qcompile zoo:llama-tiny --format int4 -g 64 -o out/llama-int4
    qcompile export out/llama-int4 --to compressed-tensors -o out/llama-int4-ct

DIR is a Hugging Face directory in the compressed-tensors format (vLLM and transformers load it);
see qcompiler/export_compressed.py for what it can express (int4, int4-sym W4A16) and how.
"""

from __future__ import annotations

import sys

from qcompiler.cli import common


def build_parser() -> common.ArgumentParser:
    from qcompiler.export_compressed import DTYPES, TARGETS

    p = common.ArgumentParser(
        prog="qcompile export",
        description="Write a compiled artifact in a format serving engines load.")
    p.add_argument("artifact", metavar="OUT", help="artifact directory written by qcompile -o")
    p.add_argument("--to", required=True, choices=TARGETS, help="the format to write")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="directory to write")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                   help="dtype of the unquantized tensors and scales (default: the "
                        "checkpoint's; float16 keeps our fp16 scales exact)")
    p.add_argument("--force", action="store_true", help="replace an earlier export at DIR")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more output on stderr")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    common.quiet_libraries()
    return common.run_main(lambda: _export(args), lambda: args.verbose)


def _export(args) -> int:
    from qcompiler.export_compressed import export

    out = export(args.artifact, args.output, to=args.to, dtype=args.dtype, force=args.force)
    if not args.quiet:
        sys.stderr.write(f"wrote {out} ({args.to})\n")
    return common.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())

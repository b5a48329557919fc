"""`qcompile formats|zoo|pipelines` and `qc-opt --list-passes`: what is available, one per line
(passes: then one indented line per option, with its type and default)."""

from __future__ import annotations

import sys

from qcompiler.cli import common


def main(argv: list[str]) -> int:
    what = argv[0]
    if what == "formats" and "--report" in argv[1:]:
        from qcompiler.formats import report

        rest = [a for a in argv[1:] if a != "--report"]
        return report.main(rest, prog="qcompile formats --report")
    p = common.ArgumentParser(prog=f"qcompile {what}", description=f"List the {what}.")
    if what == "formats":
        p.add_argument("--report", action="store_true",
                       help="instead of listing, compare the weight formats' error vs bits per "
                            "weight (see 'qcompile formats --report --help')")
    p.parse_args(argv[1:])
    common.quiet_libraries()
    printer = {"formats": print_formats, "zoo": print_zoo, "pipelines": print_pipelines}[what]
    return common.run_main(lambda: printer() or 0)


def print_formats() -> None:
    from qcompiler import formats

    for name in formats.names():
        f = formats.get(name)
        g = f.default_group_size
        bpw = f.bits_per_weight(g) if g else float(f.bits)
        sys.stdout.write(f"{name:<14} {f.bits}-bit  group {g!s:<5} scale {f.scale_type:<6} "
                         f"{bpw:.3f} bits/weight  {f.role}\n")


def print_zoo() -> None:
    from qcompiler import zoo

    for name in zoo.names():
        desc = zoo.DESCRIPTIONS.get(name, "random-init tiny model (seeded), built offline")
        sys.stdout.write(f"zoo:{name:<14} {desc}\n")


def print_passes() -> None:
    from qcompiler.pass_registry import all_passes

    for name, cls in sorted(all_passes().items()):
        sys.stdout.write(f"{name:<18} {cls.description()}\n")
        for option in cls.options():
            sys.stdout.write(f"{'':<20}{option.describe()}\n")


def print_pipelines() -> None:
    from qcompiler import named_pipelines

    for name, (spec, desc) in sorted(named_pipelines.all_pipelines().items()):
        sys.stdout.write(f"{name:<16} {spec}\n{'':<16} {desc}\n")

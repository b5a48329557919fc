"""The machine a results row was measured on: recorded in the row, rendered from the rows.

Why: the scaling benches keep their rows in JSON and re-render the whole Markdown file from all
of them after each run. A Machine line taken at render time would re-label every older row with
today's kernel build and package versions; each row carries its own instead.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata


def describe() -> str:
    """This machine and the versions that matter, as one line."""
    versions = []
    for package in ("torch", "transformers"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return (f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} "
            f"{platform.release()}; Python {platform.python_version()}, " + ", ".join(versions))


def line(rows: list[dict], unrecorded: str) -> str:
    """'Machine: ...' for these rows. `unrecorded`: what is known of the rows that predate the
    machine field (they get that text, marked as such)."""
    seen = sorted({r["machine"] for r in rows if r.get("machine")})
    parts = [f"{m} ({_rows(sum(r.get('machine') == m for r in rows))})" for m in seen]
    old = sum(not r.get("machine") for r in rows)
    if old:
        parts.append(f"{_rows(old)} from before rows recorded their machine ({unrecorded})")
    return "Machine: " + "; ".join(parts) + "." if parts else "Machine: no rows yet."


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"

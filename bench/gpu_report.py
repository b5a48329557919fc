"""Row-by-row results for bench/gpu_all.py: a JSONL file and a Markdown report re-rendered
after every row, so a run stopped at any point (timeout, crash) keeps everything measured.

    report = Report(out_dir, header)            # writes results.md with the header at once
    report.add("kernels", {"format": "int4", ...})
    report.note("decode", "skipped: out of budget")
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

JSONL = "results.jsonl"
MARKDOWN = "results.md"

# section -> (title, columns: (row key, heading, format))
SECTIONS: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "correctness": ("Correctness of every kernel against the reference (fresh random inputs)", [
        ("format", "format", "{}"), ("kernel", "kernel", "{}"), ("m", "M", "{}"),
        ("shape", "N x K", "{}"), ("err_ratio", "max err / bound", "{:.3f}"),
        ("ok", "check", "{}")]),
    "kernels": ("Fused-dequant linears vs torch fp16 matmul (Llama-3-8B shapes)", [
        ("format", "format", "{}"), ("shape", "N x K", "{}"), ("m", "M", "{}"),
        ("kernel", "kernel", "{}"), ("us", "us", "{:.1f}"), ("fp16_us", "fp16 us", "{:.1f}"),
        ("speedup", "speedup", "{:.2f}x"), ("gbs", "GB/s", "{:.0f}"),
        ("bw_fraction", "of copy BW", "{:.0%}"), ("target", "target", "{}")]),
    "decode": ("Decode tokens/s, random Llama-3-8B-shaped model", [
        ("run", "run", "{}"), ("batch", "batch", "{}"), ("new_tokens", "new tokens", "{}"),
        ("tok_s", "tok/s", "{:.1f}"), ("vs_hf", "vs HF fp16 eager", "{:.2f}x"),
        ("target", "target", "{}")]),
    "tune": ("Tuning the shipped candidate sets", [
        ("key", "tuning key", "{}"), ("candidates", "candidates", "{}"),
        ("best_us", "best us", "{:.2f}"), ("default_us", "default us", "{:.2f}"),
        ("config", "chosen config", "{}")]),
}


class Report:
    def __init__(self, out_dir: Path, header: list[str]):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.header = header
        self.rows: list[dict[str, Any]] = []
        self.notes: dict[str, list[str]] = {}
        (self.dir / JSONL).write_text("")
        self._render()

    def add(self, section: str, row: dict[str, Any]) -> None:
        row = dict(row, section=section, t=round(time.time(), 3))
        self.rows.append(row)
        with (self.dir / JSONL).open("a") as f:
            f.write(json.dumps(row, sort_keys=True, default=str) + "\n")
        self._render()

    def note(self, section: str, text: str) -> None:
        self.notes.setdefault(section, []).append(text)
        self.add(section, {"note": text})

    def failures(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("ok") is False]

    def _render(self) -> None:
        lines = list(self.header)
        for name, (title, cols) in SECTIONS.items():
            rows = [r for r in self.rows if r["section"] == name and "note" not in r]
            notes = self.notes.get(name, [])
            if not rows and not notes:
                continue
            lines += ["", f"## {title}", ""]
            if rows:
                lines.append("| " + " | ".join(h for _, h, _ in cols) + " |")
                lines.append("|" + "---|" * len(cols))
                lines += ["| " + " | ".join(_cell(r, k, f) for k, _, f in cols) + " |"
                          for r in rows]
            lines += [f"- {n}" for n in notes]
        tmp = self.dir / (MARKDOWN + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.dir / MARKDOWN)


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    v = row.get(key)
    if v is None:
        return ""
    if isinstance(v, bool):
        return "ok" if v else "WRONG"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)

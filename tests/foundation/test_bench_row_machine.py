"""Results files re-rendered from their JSON rows name each row's own machine and keep each
row's note (bench/row_machine.py, bench/layerwise_scaling.py): re-rendering after a new run must
not relabel older rows with today's machine or drop what was written about them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import layerwise_scaling  # noqa: E402
import row_machine  # noqa: E402


def test_machine_line_counts_each_recorded_machine_and_the_unrecorded_rows():
    rows = [{"machine": "a"}, {"machine": "b"}, {"machine": "a"}, {}]
    line = row_machine.line(rows, "as of the old render")
    assert line == ("Machine: a (2 rows); b (1 row); 1 row from before rows recorded their "
                    "machine (as of the old render).")
    assert row_machine.line([], "x") == "Machine: no rows yet."
    assert "Python" in row_machine.describe() and "torch" in row_machine.describe()


def test_layerwise_render_keeps_notes_and_machines():
    base = {"size": "1B", "format": "razer4", "layers": 2, "full_depth": 16, "samples": 4,
            "seqlen": 64, "sequential": True, "peak_rss_mib": 1500, "budget": 2 << 30,
            "met": True, "layer_fp32": 1 << 28, "packed_bytes": 1 << 20, "gptq_s": 1.0,
            "wall_s": 2.0, "cpu_s": 3.0, "load": 0.5, "date": "2026-12-03 20:00 UTC"}
    text = "\n".join(layerwise_scaling.render([dict(base, note="ran beside another job"),
                                               dict(base, machine="m1")]))
    assert "The 1B row of 2026-12-03 20:00 UTC: ran beside another job" in text
    assert "m1 (1 row)" in text and "1 row from before rows recorded their machine" in text

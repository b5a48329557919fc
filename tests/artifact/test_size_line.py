"""The one-line size report after a compile: smaller or larger than the fp16 checkpoint, and
what to do when the tensors kept in fp make it larger."""

from __future__ import annotations

from qcompiler.artifact import size_line, size_summary


def test_smaller_and_larger_than_the_fp16_checkpoint():
    small = size_line(size_summary(1_000_000, 4_000_000))  # 8 MB in fp16
    assert small == "1.00 MB, 2.00 bits/parameter (fp16 checkpoint 8.00 MB: 8.0x smaller)"
    large = size_line(size_summary(12_000_000, 4_000_000))
    assert large.startswith("12.00 MB, 24.00 bits/parameter (fp16 checkpoint 8.00 MB: 1.5x "
                            "larger: the tensors kept in fp stay in the checkpoint's dtype; "
                            "--quantize-embeddings")
    assert size_line(size_summary(2_000_000, None)) == "2.00 MB of weights"

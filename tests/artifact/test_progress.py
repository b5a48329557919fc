"""The per-layer progress bar: on stderr for a person at a terminal, never in logs, off with -q."""

from __future__ import annotations

import io
import sys

import pytest

import qcompiler
from qcompiler.cli import qcompile

SPEC = "canonicalize,dce,lower-datatype{format=int4,search=rtn},dce"


class Terminal(io.StringIO):
    """stderr as a terminal would be (tqdm also asks for its size, which a StringIO lacks)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def fake_stderr(monkeypatch):
    def install(tty: bool) -> io.StringIO:
        stream = Terminal() if tty else io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        return stream

    return install


def test_bar_per_layer_on_a_terminal(fake_stderr, tmp_path):
    err = fake_stderr(tty=True)
    qcompiler.compile("zoo:llama-tiny", pipeline=SPEC, out=tmp_path / "out")
    text = err.getvalue()
    # 15 linear layers in llama-tiny (14 quantized, lm_head kept in fp): one step per layer.
    # Which intermediate frames tqdm draws depends on timing; the first one is always drawn.
    assert "lower-datatype" in text and "0/15" in text, text[-500:]
    assert "write weights" in text


def test_no_bar_when_stderr_is_a_file(fake_stderr, tmp_path):
    err = fake_stderr(tty=False)
    qcompiler.compile("zoo:llama-tiny", pipeline=SPEC, out=tmp_path / "out")
    assert "lower-datatype" not in err.getvalue() and "it/s" not in err.getvalue()


def test_quiet_silences_the_bar(fake_stderr, tmp_path):
    err = fake_stderr(tty=True)
    assert qcompile.main(["zoo:llama-tiny", "--pipeline", SPEC, "-o", str(tmp_path / "loud")]) == 0
    assert "lower-datatype" in err.getvalue()
    err = fake_stderr(tty=True)
    assert qcompile.main(["zoo:llama-tiny", "--pipeline", SPEC, "-o", str(tmp_path / "out"),
                          "-q"]) == 0
    assert err.getvalue() == ""
    err = fake_stderr(tty=True)
    qcompiler.compile("zoo:llama-tiny", pipeline=SPEC, out=tmp_path / "again", quiet=True)
    assert err.getvalue() == ""

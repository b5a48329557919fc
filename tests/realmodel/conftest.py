"""Fixtures for real-text evaluation and export: a tiny Llama with a tokenizer."""

from __future__ import annotations

import pytest
from realmodel_helpers import word_tokenizer

from qcompiler import zoo


@pytest.fixture(scope="session")
def llama_with_tokenizer(tmp_path_factory):
    """zoo:llama-tiny saved as an HF directory together with a word-level tokenizer."""
    directory = tmp_path_factory.mktemp("llama-tok") / "hf"
    zoo.build_module("llama-tiny").save_pretrained(directory)
    word_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def llama_program_once(llama_with_tokenizer):
    """That directory captured once per session (capture is the slow part); clone before
    handing it to anything that changes it."""
    from qcompiler.capture import capture

    return capture(str(llama_with_tokenizer))


@pytest.fixture
def llama_program(llama_program_once):
    return llama_program_once.clone()

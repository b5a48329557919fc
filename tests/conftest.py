"""Shared pytest setup: offline Hugging Face, quiet warnings, Triton on the CPU interpreter."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRITON_INTERPRET", "1")

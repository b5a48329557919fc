"""Shared pytest setup: offline Hugging Face, quiet warnings, Triton on the CPU interpreter."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRITON_INTERPRET", "1")
# pytest runs two workers on two cores (`-n 2`): one torch thread each, or they oversubscribe the
# cores and the scale searches slow down many times over.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

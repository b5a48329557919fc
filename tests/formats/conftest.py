"""One intra-op thread for the format tests: quantization is a long chain of small elementwise
ops, and on a shared machine OpenMP's barriers between them cost more than a second thread
gains (a MiniLM layer took 20x longer with 2 threads on a loaded 2-core box)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""Fixtures: a captured two-linear module whose second linear sees correlated inputs."""

from __future__ import annotations

import pytest
import torch
from calib_helpers import Mixed

from qcompiler.capture import capture_module


@pytest.fixture
def mixed_program():
    torch.manual_seed(0)
    module = Mixed().eval()
    return capture_module(module, (torch.randn(1, 16, 32),), source="mixed")

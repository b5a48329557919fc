"""Hadamard and random orthogonal matrices: exact, orthogonal, seeded, and clear about sizes."""

from __future__ import annotations

import math

import pytest
import torch

from qcompiler.hadamard import (hadamard, hadamard_factor, has_hadamard, paley,
                                random_hadamard, random_orthogonal, sylvester)


def eye(n: int) -> torch.Tensor:
    return torch.eye(n, dtype=torch.float64)


@pytest.mark.parametrize("n", [1, 2, 4, 64, 128, 1024])
def test_sylvester_is_a_symmetric_pm1_hadamard_matrix(n):
    h = sylvester(n)
    assert bool((h.abs() == 1).all())
    assert torch.equal(h, h.T)
    assert torch.equal(h @ h.T, n * eye(n))


@pytest.mark.parametrize("m", [4, 8, 12, 20, 24, 28, 36, 44, 60, 76, 108, 140, 148])
def test_paley_matrices_are_exact(m):
    h = paley(m)
    assert h.shape == (m, m) and bool((h.abs() == 1).all())
    assert torch.equal(h @ h.T, m * eye(m))  # integer arithmetic in float64: exact


@pytest.mark.parametrize("n, factor", [(12, 12), (24, 12), (40, 20), (176, 44), (448, 28),
                                       (5632, 44), (8960, 140), (14336, 28), (4096, 1)])
def test_sizes_of_real_models_have_a_construction(n, factor):
    assert hadamard_factor(n) == factor


@pytest.mark.parametrize("n", [12, 48, 88, 96, 280])
def test_kronecker_sizes_are_orthogonal_with_pm_entries(n):
    h = hadamard(n)
    torch.testing.assert_close(h @ h.T, eye(n), rtol=0, atol=1e-12)
    torch.testing.assert_close(h.abs(), torch.full((n, n), 1 / math.sqrt(n),
                                                   dtype=torch.float64))


@pytest.mark.parametrize("n", [3, 6, 172, 11008])
def test_unknown_orders_name_the_size(n):
    assert not has_hadamard(n)
    with pytest.raises(ValueError, match=rf"^no Hadamard matrix of order {n} is known"):
        hadamard(n)


def test_paley_and_sylvester_reject_other_orders():
    with pytest.raises(ValueError, match="powers of two, not 12"):
        sylvester(12)
    with pytest.raises(ValueError, match="order 16"):
        paley(16)


def test_random_hadamard_is_orthogonal_and_seeded():
    a, b, c = random_hadamard(64, 0), random_hadamard(64, 0), random_hadamard(64, 1)
    torch.testing.assert_close(a @ a.T, eye(64), rtol=0, atol=1e-12)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert bool((a.abs() == 1 / 8).all())


def test_random_orthogonal_is_orthogonal_seeded_and_dense():
    a, b, c = random_orthogonal(96, 3), random_orthogonal(96, 3), random_orthogonal(96, 4)
    torch.testing.assert_close(a @ a.T, eye(96), rtol=0, atol=1e-12)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert float(a.abs().max()) < 0.5  # no axis-aligned column: outliers get spread
    assert random_orthogonal(8, 0, torch.float32).dtype == torch.float32

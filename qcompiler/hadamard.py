"""Orthogonal matrices for rotating weights and activations (QuaRot, SpinQuant, QuIP#).

A rotation Q spreads an outlier channel over all channels, so per-group scales stop being set
by one large value; because Q is orthogonal it can be folded into weights with no change to the
function. Two kinds:

- Hadamard: entries ±1/√n. Exact constructions only (a wrong matrix would silently change the
  model): Sylvester for n = 2^k, and the Kronecker product of Sylvester with a Paley matrix for
  n = 2^k · m, where m = q + 1 (q prime, q ≡ 3 mod 4: 12, 20, 24, 44, 48, 60, 68, 72, 84, 108,
  140, ...) or m = 2(q + 1) (q prime, q ≡ 1 mod 4: 12, 28, 36, 60, 76, 124, 148, ...). That
  covers the hidden and MLP sizes of most LLMs (4096, 5632 = 128·44, 8960 = 64·140,
  14336 = 512·28, 18944 = 128·148). Other sizes raise `ValueError` naming the size.
- Random orthogonal: QR of a seeded Gaussian matrix with the sign of R's diagonal folded in,
  which makes it Haar-distributed (any n, no structure to exploit online).

`random_hadamard(n, seed)` is H·diag(±1) with seeded signs, QuaRot's default: as cheap to apply
as H, but different seeds give different rotations.
"""

from __future__ import annotations

import functools
import math

import torch

MAX_PALEY_ORDER = 1024  # Paley factors are searched up to this order (bigger: not needed)


def is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def sylvester(n: int) -> torch.Tensor:
    """The ±1 Sylvester Hadamard matrix of order n = 2^k (symmetric, H·H = n·I), float64."""
    if not is_pow2(n):
        raise ValueError(f"Sylvester Hadamard matrices exist only for powers of two, not {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, math.isqrt(q) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[i, j] = χ(j − i) for the quadratic character χ of GF(q), q prime."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if a in squares else -1.0 for a in range(1, q)],
                       dtype=torch.float64)
    idx = (torch.arange(q)[None, :] - torch.arange(q)[:, None]) % q
    return chi[idx]


def _paley_prime(m: int) -> tuple[int, int] | None:
    """(construction 1 or 2, q) when a Paley construction of order m exists with q prime."""
    if _is_prime(m - 1) and (m - 1) % 4 == 3:
        return 1, m - 1
    if m % 2 == 0 and _is_prime(m // 2 - 1) and (m // 2 - 1) % 4 == 1:
        return 2, m // 2 - 1
    return None


def paley(m: int) -> torch.Tensor:
    """The ±1 Paley Hadamard matrix of order m (see the module docstring for which m), float64."""
    found = _paley_prime(m)
    if found is None:
        raise ValueError(f"no Paley construction of a Hadamard matrix of order {m}")
    kind, q = found
    jac = _jacobsthal(q)
    ones = torch.ones(q, dtype=torch.float64)
    if kind == 1:  # q ≡ 3 (mod 4): H = I + S, S skew-symmetric conference matrix
        s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
        s[0, 1:], s[1:, 0], s[1:, 1:] = ones, -ones, jac
        return torch.eye(q + 1, dtype=torch.float64) + s
    c = torch.zeros(q + 1, q + 1, dtype=torch.float64)  # q ≡ 1 (mod 4): symmetric conference
    c[0, 1:], c[1:, 0], c[1:, 1:] = ones, ones, jac
    a = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    return torch.kron(c, a) + torch.kron(torch.eye(q + 1, dtype=torch.float64), b)


def hadamard_factor(n: int) -> int | None:
    """The smallest non-power-of-two factor m (1 for n = 2^k) with n = 2^j · m and m a Paley
    order: the smallest m leaves the largest Sylvester part, which a fast transform applies."""
    if is_pow2(n):
        return 1
    m = n
    while m % 2 == 0:
        m //= 2
    while m <= min(n, MAX_PALEY_ORDER):
        if _paley_prime(m) is not None:
            return m
        m *= 2
    return None


def has_hadamard(n: int) -> bool:
    return hadamard_factor(n) is not None


@functools.lru_cache(maxsize=16)
def _hadamard_pm1(n: int) -> torch.Tensor:
    m = hadamard_factor(n)
    if m is None:
        raise ValueError(
            f"no Hadamard matrix of order {n} is known to qcompiler (it builds 2^k and 2^k·m for "
            "Paley orders m such as 12, 20, 28, 44, 140); use a random rotation for this size")
    h = sylvester(n // m)
    if m > 1:
        h = torch.kron(h, paley(m))
    return h


def hadamard(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The orthogonal Hadamard matrix H/√n of order n (H·Hᵀ = I); ValueError for unknown n."""
    return (_hadamard_pm1(n) / math.sqrt(n)).to(dtype)


def random_hadamard(n: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """diag(s)·H/√n with seeded random signs s: an orthogonal ±1/√n matrix per seed."""
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n,), generator=gen, dtype=torch.float64) * 2 - 1
    return (signs[:, None] * hadamard(n)).to(dtype)


def random_orthogonal(n: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A Haar-random orthogonal matrix: QR of a seeded Gaussian, R's diagonal signs folded in."""
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))[None, :]).to(dtype)

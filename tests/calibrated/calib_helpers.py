"""Small seeded layers with correlated inputs (where calibration matters), shared by tests."""

from __future__ import annotations

import torch


class Mixed(torch.nn.Module):
    """x [1, T, 32] -> a fixed mixing linear (correlated features, a few outlier channels)
    -> the layer under test `proj` (N=48, K=128)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.mix = torch.nn.Linear(32, 128, bias=False)
        self.proj = torch.nn.Linear(128, 48, bias=True)
        with torch.no_grad():
            self.mix.weight.copy_(torch.randn(128, 32, generator=g) / 4)
            self.mix.weight[:4] *= 8  # outlier input channels of proj
            self.proj.weight.copy_(torch.randn(48, 128, generator=g) / 10)
            self.proj.bias.copy_(torch.randn(48, generator=g) / 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.mix(x))


def correlated(n: int = 48, k: int = 128, t: int = 512, seed: int = 0):
    """A weight [n, k] and activations [t, k] with strongly correlated channels."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k ** 0.5 + torch.eye(k)
    x = torch.randn(t, k, generator=g) @ mix
    x[:, :3] *= 6
    w = torch.randn(n, k, generator=g) / 10
    return w, x


def out_err(x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """Relative output error ||x wᵀ − x ŵᵀ||² / ||x wᵀ||²."""
    return float(((x @ (w - w_hat).T) ** 2).sum() / ((x @ w.T) ** 2).sum())


def channel_scaled(n: int = 64, k: int = 256, t: int = 1024, seed: int = 0):
    """A weight [n, k] and activations [t, k] whose channels differ in scale as an LLM's do
    (log-normal spread, 4 outlier channels 10x larger), mildly correlated."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.randn(k, generator=g) * 0.8)
    scale[:4] *= 10
    mix = torch.randn(k, k, generator=g) / k ** 0.5 * 0.5 + torch.eye(k)
    x = (torch.randn(t, k, generator=g) @ mix) * scale
    w = torch.randn(n, k, generator=g) / 10
    return w, x

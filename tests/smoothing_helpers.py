"""A base classifier whose smoothed probabilities are known in closed form.

ThresholdModel predicts class 0 when the first coordinate of the input is below t and class 1
otherwise. Under x + η, η ~ N(0, σ² I): p_0 = Φ((t − x_0)/σ), and the smoothed classifier's
exact ℓ2 robustness radius for class 0 is t − x_0 = σ·Φ⁻¹(p_0).
"""
from __future__ import annotations

import torch
from torch import nn


class ThresholdModel(nn.Module):
    def __init__(self, t: float, num_classes: int = 2) -> None:
        super().__init__()
        self.t = t
        self.num_classes = num_classes
        self.seen: list[torch.Tensor] = []
        self.record = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.record:
            self.seen.append(x.detach().clone())
        v = x.flatten(1)[:, 0]
        logits = torch.zeros(x.shape[0], self.num_classes, dtype=x.dtype, device=x.device)
        logits[:, 0] = self.t - v
        logits[:, 1] = v - self.t
        return logits


def threshold_inputs(x0: torch.Tensor, shape: tuple[int, ...] = (1, 2, 2)) -> torch.Tensor:
    """Inputs (N, *shape) in [0, 1] whose first coordinate is x0 (others 0.5)."""
    x = torch.full((x0.shape[0], *shape), 0.5, dtype=torch.float64)
    x.view(x0.shape[0], -1)[:, 0] = x0
    return x

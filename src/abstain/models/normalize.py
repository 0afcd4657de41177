"""Input normalisation as the model's first layer, so attacks work in pixel space."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

# Dataset statistics commonly used with published models.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel (dim 1); identity when mean=0, std=1."""

    def __init__(self, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)) -> None:
        super().__init__()
        # explicit CPU: also valid inside a ``torch.device("meta")`` context (shape-only builds)
        mean_t = torch.as_tensor(mean, dtype=torch.float32, device="cpu")
        std_t = torch.as_tensor(std, dtype=torch.float32, device="cpu")
        if (std_t <= 0).any():
            raise ValueError("normalisation std must be positive")
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


class NormalizedModel(nn.Module):
    """Wrap a model that expects normalised inputs so it takes [0, 1] inputs.

    ``normalize=(mean, std)`` in the public API builds this wrapper.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))

"""Small models for the miniature experiments: the paper's synthetic MLP and a digits CNN."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from .normalize import Normalize


def mlp(num_classes: int, in_features: int = 2, hidden: int = 64, depth: int = 4,
        mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)) -> nn.Module:
    """The paper's synthetic model (Appendix A.2): ``depth`` hidden layers of ``hidden``
    ReLU units on flat inputs of ``in_features`` dimensions."""
    layers: list[nn.Module] = [Normalize(mean, std), nn.Flatten()]
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(num_classes: int, in_channels: int = 1, input_size: int = 8, width: int = 32,
        mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)) -> nn.Module:
    """A small CNN for 8x8 digits (and other small images): two 3x3 conv blocks,
    a 2x2 max-pool and a two-layer head."""
    pooled = input_size // 2
    return nn.Sequential(
        Normalize(mean, std),
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * pooled * pooled, 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )

"""Small models for the miniature experiments: the paper's synthetic MLP, a digits CNN and
a 1-D CNN for MNIST-1D."""
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


def cnn1d(num_classes: int, in_channels: int = 1, length: int = 40, width: int = 32,
          mean: Sequence[float] = (0.5,), std: Sequence[float] = (1.0 / 12.0,)) -> nn.Module:
    """A small 1-D CNN for signals (N, C, L), made for MNIST-1D: a width-5 conv, two
    stride-2 width-3 convs (L → L/4) and a two-layer head.

    The default ``mean``/``std`` undo MNIST-1D's fixed map to [0, 1]
    (``abstain.data.mnist1d``: x = (z + 6)/12 for the standardised signal z), so the
    convolutions see the standardised signal; pass (0,), (1,) for other data.
    """
    reduced = (length + 3) // 4  # two stride-2 convs with padding 1 and kernel 3: ceil(L/4)
    return nn.Sequential(
        Normalize(mean, std),
        nn.Conv1d(in_channels, width, 5, padding=2), nn.ReLU(),
        nn.Conv1d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * width * reduced, 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )

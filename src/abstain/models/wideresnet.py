"""WideResNet with RobustBench's parameter names, so published state dicts load as they are.

Layout of ``robustbench/model_zoo/architectures/wide_resnet.py`` (itself from
yaodongyu/TRADES): ``conv1``; ``block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2}`` with
``convShortcut`` in the first block of a stage whose width changes; final ``bn1`` and
``fc``. Pre-activation blocks; widths 16, 16k, 32k, 64k for widen factor k; depth 6n+4.

Normalisation: RobustBench's WideResNet checkpoints for CIFAR-10 (Carmon2019Unlabeled,
Sehwag2020Hydra, Wang2020Improving, Zhang2019Theoretically, ...) take raw [0, 1] inputs,
so the default here is the identity (mean 0, std 1). Models that normalise inside
(RobustBench's ``mu``/``sigma`` buffers) are handled by
:func:`abstain.models.published.load_published`, or pass ``mean``/``std``.
RobustBench's ``sub_block1=True`` variants hold a block that ``forward`` never uses;
its weights are dropped on loading (see ``published.py``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .normalize import Normalize


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv-BN-ReLU-conv, 1x1 ``convShortcut`` when widths differ.

    As in the reference, when the widths differ the shortcut takes the *activated* input."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, kernel_size=3, stride=1, padding=1, bias=False)
        self.equal_in_out = cin == cout
        self.convShortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(F.relu(self.bn2(out)))
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """One stage: ``layer`` is a Sequential of ``n`` blocks (the name RobustBench uses)."""

    def __init__(self, n: int, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[WideBasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                     for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k (Zagoruyko & Komodakis 2016) taking [0, 1] inputs."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int,
                 mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
                 in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4 (16, 28, 34, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():  # the reference initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def wrn_28_10(num_classes: int, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
              in_channels: int = 3) -> WideResNet:
    """WideResNet-28-10 (36.5M parameters for 10 classes): Carmon et al. 2019 and others."""
    return WideResNet(28, 10, num_classes, mean, std, in_channels)


def wrn_34_10(num_classes: int, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
              in_channels: int = 3) -> WideResNet:
    """WideResNet-34-10 (46.2M parameters): Zhang et al. 2019 (TRADES) in RobustBench."""
    return WideResNet(34, 10, num_classes, mean, std, in_channels)


def wrn_40_10(num_classes: int, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
              in_channels: int = 3) -> WideResNet:
    """WideResNet-40-10 (55.9M parameters for 10 classes)."""
    return WideResNet(40, 10, num_classes, mean, std, in_channels)

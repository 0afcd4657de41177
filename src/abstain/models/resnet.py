"""CIFAR ResNets with the parameter names of the published checkpoints users load.

* ``resnet18`` / ``resnet50``: the "kuangliu" CIFAR ResNet used by RobustBench
  (``robustbench/model_zoo/architectures/resnet.py``: ``ResNet(BasicBlock, [2, 2, 2, 2])``
  and ``ResNet(Bottleneck, [3, 4, 6, 3])``; keys ``conv1``, ``bn1``,
  ``layer{1..4}.{i}.conv1/bn1/...``, ``layer{k}.0.shortcut.{0,1}``, ``linear``). This is the
  layout of e.g. ``Sehwag2021Proxy_R18`` (the paper's certified ResNet-18, Table 2) and
  ``Engstrom2019Robustness`` (ResNet-50). Standard (post-activation) blocks: these are the
  ResNet-18/50 checkpoints of the RobustBench CIFAR zoo; the pre-activation variants there
  (``PreActResNet``) use other names and are not covered.
* ``resnet110``: Cohen et al.'s randomized-smoothing model (``locuslab/smoothing``,
  ``code/archs/cifar_resnet.py``, itself from bearpaw/pytorch-classification): CIFAR
  ResNet with basic blocks, depth 6n+2 = 110, widths 16/32/64, 1.73M parameters; keys
  ``conv1``, ``bn1``, ``layer{1..3}.{i}...``, ``layer{k}.0.downsample.{0,1}``, ``fc``.

Every model takes inputs in [0, 1]: :class:`~abstain.models.normalize.Normalize` is its
first layer (its mean/std are non-persistent buffers, so the state dict holds exactly
the publisher's keys). The final pooling is a global mean over H and W
(:func:`global_avg_pool`), which equals the publishers' fixed ``avg_pool2d`` on 32x32 inputs
and also accepts 64x64 MTSD crops.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .normalize import CIFAR10_MEAN, CIFAR10_STD, Normalize

# Cohen et al.'s NormalizeLayer statistics (locuslab/smoothing code/datasets.py).
COHEN_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
COHEN_CIFAR10_STD = (0.2023, 0.1994, 0.2010)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """The mean of (N, C, H, W) features over H and W: (N, C).

    Equal to ``F.adaptive_avg_pool2d(x, 1).flatten(1)`` (bitwise on CPU, both memory
    layouts; tested), but written as a mean because the CUDA backward of
    ``adaptive_avg_pool2d`` has no deterministic kernel: under
    ``torch.use_deterministic_algorithms(True)`` it raises, and every training step and
    attack would stop. The mean's backward is a broadcast, deterministic everywhere."""
    return x.mean(dim=(2, 3))


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


# ---------------------------------------------------------------- RobustBench (kuangliu) layout
class BasicBlock(nn.Module):
    """Post-activation basic block; 1x1 projection ``shortcut`` when the shape changes."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, planes * self.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """Post-activation bottleneck (1x1, 3x3 with the stride, 1x1 x4)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, planes * self.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet (3x3 stem, no max-pool, stages of 64/128/256/512 planes)."""

    def __init__(self, block: type[nn.Module], num_blocks: Sequence[int], num_classes: int,
                 mean: Sequence[float], std: Sequence[float], in_channels: int = 3) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = _conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            layers = []
            for s in [1 if i == 0 else 2] + [1] * (n - 1):
                layers.append(block(cin, planes, s))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = global_avg_pool(out)
        return self.linear(out)


def resnet18(num_classes: int, mean: Sequence[float] = CIFAR10_MEAN,
             std: Sequence[float] = CIFAR10_STD, in_channels: int = 3) -> ResNet:
    """CIFAR ResNet-18 (11.17M parameters for 10 classes), RobustBench key layout."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, mean, std, in_channels)


def resnet50(num_classes: int, mean: Sequence[float] = CIFAR10_MEAN,
             std: Sequence[float] = CIFAR10_STD, in_channels: int = 3) -> ResNet:
    """CIFAR ResNet-50 (23.52M parameters for 10 classes), RobustBench key layout.

    Also the paper's MTSD model (Tables 4, 6, 7) on 64x64 crops (adaptive pooling)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, mean, std, in_channels)


# ---------------------------------------------------------------- Cohen et al. layout
class CohenBasicBlock(nn.Module):
    """Basic block of bearpaw's CIFAR ResNet: projection ``downsample`` (conv+BN)."""

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class CohenResNet(nn.Module):
    """Depth-(6n+2) CIFAR ResNet with widths 16/32/64 (He et al. 2016, Sec. 4.2)."""

    def __init__(self, depth: int, num_classes: int, mean: Sequence[float], std: Sequence[float],
                 in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.normalize = Normalize(mean, std)
        self.conv1 = _conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for i, planes in enumerate((16, 32, 64)):
            layers = []
            for s in [1 if i == 0 else 2] + [1] * (n - 1):
                layers.append(CohenBasicBlock(cin, planes, s))
                cin = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = global_avg_pool(out)
        return self.fc(out)


def resnet110(num_classes: int, mean: Sequence[float] = COHEN_CIFAR10_MEAN,
              std: Sequence[float] = COHEN_CIFAR10_STD, in_channels: int = 3) -> CohenResNet:
    """Cohen et al.'s (2019) smoothing model: CIFAR ResNet-110, 1.73M parameters.

    The default normalisation is the one their ``NormalizeLayer`` applies
    (mean 0.4914/0.4822/0.4465, std 0.2023/0.1994/0.2010), so their checkpoints
    give their outputs on [0, 1] inputs."""
    return CohenResNet(110, num_classes, mean, std, in_channels)

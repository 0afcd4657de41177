"""WideResNet with RobustBench's parameter names, so published state dicts load as they are.

Layout of ``robustbench/model_zoo/architectures/wide_resnet.py`` (itself from
yaodongyu/TRADES): ``conv1``; ``block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2}`` with
``convShortcut`` in the first block of a stage whose width changes; final ``bn1`` and
``fc``. Pre-activation blocks; widths 16, 16k, 32k, 64k for widen factor k; depth 6n+4.

Normalisation: RobustBench's WideResNet checkpoints for CIFAR-10 (Carmon2019Unlabeled,
Sehwag2020Hydra, Wang2020Improving, Zhang2019Theoretically, ...) take raw [0, 1] inputs,
so the default here is the identity (mean 0, std 1). Models that normalise inside
(RobustBench's ``mu``/``sigma`` buffers) are handled by
:func:`abstain.foreign.load_published`, or pass ``mean``/``std``.
RobustBench's ``sub_block1=True`` variants hold a block that ``forward`` never uses;
its weights are dropped on loading (see ``published.py``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .normalize import Normalize
from .resnet import global_avg_pool


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
        out = global_avg_pool(out)
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


# ---------------------------------------------------------------- DeepMind layout
class DMBlock(nn.Module):
    """Block of DeepMind's WideResNet (RobustBench ``dm_wide_resnet.py``): pre-activation,
    TensorFlow-style "SAME" padding (stride 2 pads right/bottom only), keys ``batchnorm_0``,
    ``conv_0``, ``batchnorm_1``, ``conv_1``, ``shortcut``."""

    def __init__(self, cin: int, cout: int, stride: int, act: nn.Module) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"unsupported stride {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(cin)
        self.conv_0 = nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(cout)
        self.conv_1 = nn.Conv2d(cout, cout, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)
        self.pad = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.batchnorm_0(x))
        out = self.conv_0(F.pad(a, self.pad))
        out = self.conv_1(self.act(self.batchnorm_1(out)))
        return (x if self.shortcut is None else self.shortcut(a)) + out


class DMBlockGroup(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int, act: nn.Module) -> None:
        super().__init__()
        self.block = nn.Sequential(*[DMBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, act)
                                     for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


_ACTIVATIONS = {"swish": nn.SiLU, "relu": nn.ReLU}


class DMWideResNet(nn.Module):
    """DeepMind's WideResNet (Gowal et al. 2020, Rebuffi et al. 2021 in RobustBench) with its
    parameter names (``init_conv``, ``layer.{g}.block.{i}...``, ``batchnorm``, ``logits``).
    Swish (x * sigmoid(x), ``nn.SiLU``) is the activation of the published models."""

    def __init__(self, depth: int, width: int, num_classes: int, mean: Sequence[float],
                 std: Sequence[float], activation: str = "swish", in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
        n = (depth - 4) // 6
        widths = (16, 16 * width, 32 * width, 64 * width)
        act = _ACTIVATIONS[activation]()
        self.normalize = Normalize(mean, std)
        self.init_conv = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(DMBlockGroup(n, widths[0], widths[1], 1, act),
                                   DMBlockGroup(n, widths[1], widths[2], 2, act),
                                   DMBlockGroup(n, widths[2], widths[3], 2, act))
        self.batchnorm = nn.BatchNorm2d(widths[3])
        self.act = act
        self.logits = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(self.init_conv(self.normalize(x)))
        out = self.act(self.batchnorm(out))
        return self.logits(global_avg_pool(out))


def dm_wrn_28_10(num_classes: int, mean: Sequence[float] = (0.4914, 0.4822, 0.4465),
                 std: Sequence[float] = (0.2471, 0.2435, 0.2616), activation: str = "swish",
                 in_channels: int = 3) -> DMWideResNet:
    """DeepMind-layout WideResNet-28-10 with Swish (36.5M parameters): RobustBench's
    Gowal2020Uncovering_28_10_extra (CIFAR-10) and Rebuffi2021Fixing_28_10_cutmix_ddpm
    (CIFAR-10, CIFAR-100), the paper's Table 1/6 models. The published checkpoints carry
    their ``mean``/``std``, which :func:`abstain.foreign.load_published` applies."""
    return DMWideResNet(28, 10, num_classes, mean, std, activation, in_channels)

"""The in-memory dataset type every loader returns."""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from ..errors import DataError


class TensorDataset(Dataset):
    """Images/vectors ``x`` (float32 in [0, 1]) and integer labels ``y``.

    Attributes ``num_classes``, ``input_shape`` (without batch) and ``name`` let
    callers build a matching model without reading the data.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, name: str,
                 classes: Sequence[str] | None = None) -> None:
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{name}: {x.shape[0]} inputs but {y.shape[0]} labels")
        if x.shape[0] == 0:
            raise DataError(f"{name}: the dataset is empty")
        if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise DataError(f"{name}: inputs must be finite and in [0, 1]")
        if int(y.min()) < 0 or int(y.max()) >= num_classes:
            raise DataError(f"{name}: labels outside [0, {num_classes})")
        self.x = x.float().contiguous()
        self.y = y.long().contiguous()
        self.num_classes = int(num_classes)
        self.name = name
        self.classes = list(classes) if classes is not None else [str(i) for i in range(num_classes)]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index):
        return self.x[index], self.y[index]

    def subset(self, index: torch.Tensor) -> "TensorDataset":
        return TensorDataset(self.x[index], self.y[index], self.num_classes, self.name, self.classes)


def balanced_subset(y: torch.Tensor, size: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """Indices of a seeded, class-balanced subset of ``size`` samples (sorted).

    Each class contributes ``size // k`` samples (the remainder goes to the first
    classes with samples left), so reports always state which subset was used.
    """
    if size <= 0:
        raise DataError(f"subset size must be positive, got {size}")
    if size >= y.shape[0]:
        return torch.arange(y.shape[0])
    g = torch.Generator().manual_seed(seed)
    per_class = [torch.nonzero(y == c).flatten() for c in range(num_classes)]
    per_class = [idx[torch.randperm(idx.numel(), generator=g)] for idx in per_class]
    take = [0] * num_classes
    remaining = size
    while remaining > 0:
        progressed = False
        for c in range(num_classes):
            if remaining and take[c] < per_class[c].numel():
                take[c] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            break
    chosen = torch.cat([per_class[c][: take[c]] for c in range(num_classes)])
    return torch.sort(chosen).values


def train_val_split(n: int, val_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of ``range(n)`` into train and validation indices (validation is
    carved from the training data: model selection never sees the test set)."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(n * val_fraction))
    return torch.sort(perm[n_val:]).values, torch.sort(perm[:n_val]).values

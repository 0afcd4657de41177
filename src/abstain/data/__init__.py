"""Datasets: ``abstain.data.load(name, split, root=None, seed=0)``.

Every dataset yields ``(x, y)`` with ``x`` float in [0, 1] of shape (C, H, W) for
images, (1, L) for 1-D signals (``mnist1d``) or (D,) for vectors.
"""
from __future__ import annotations

import importlib
from typing import Any

from ..errors import DataError
from .base import TensorDataset, balanced_subset, train_val_split

# name -> (module, function); each function takes (split, root, seed, **kw)
_LOADERS: dict[str, tuple[str, str]] = {
    "gauss3": ("synthetic", "gauss3"),
    "digits": ("digits", "digits"),
    "mnist1d": ("mnist1d", "mnist1d"),
    "cifar10": ("cifar", "cifar10"),
    "cifar100": ("cifar", "cifar100"),
    "folder": ("folder", "folder"),
    "mtsd": ("mtsd", "mtsd"),
}
DATASETS = tuple(_LOADERS)
SPLITS = ("train", "test")
NEEDS_ROOT = ("cifar10", "cifar100", "folder", "mtsd")


def load(name: str, split: str = "train", root: str | None = None, seed: int = 0, **kw: Any):
    """Return the dataset ``name`` (one of DATASETS) for ``split`` ("train"/"test").

    File-backed datasets (cifar10, cifar100, folder, mtsd) read from ``root``; a
    missing or truncated file raises :class:`DataError` naming it.
    """
    if name not in _LOADERS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if name in NEEDS_ROOT and root is None:
        raise DataError(f"dataset {name!r} reads local files: pass root=<directory> (--data-root)")
    module, func = _LOADERS[name]
    fn = getattr(importlib.import_module(f"{__name__}.{module}"), func)
    if name in NEEDS_ROOT:
        return fn(split=split, root=root, seed=seed, **kw)
    return fn(split=split, seed=seed, **kw)


__all__ = ["load", "DATASETS", "TensorDataset", "balanced_subset", "train_val_split"]

"""Model registry: ``abstain.models.create(name, num_classes, **kw)``.

Every model takes inputs in [0, 1]; normalisation is its first layer.
"""
from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from ..errors import AbstainError
from .normalize import Normalize, NormalizedModel

# name -> (module, factory). Factories take (num_classes, **kw).
_MODELS: dict[str, tuple[str, str]] = {
    "mlp": ("small", "mlp"),
    "cnn": ("small", "cnn"),
    "cnn1d": ("small", "cnn1d"),
    "resnet18": ("resnet", "resnet18"),
    "resnet50": ("resnet", "resnet50"),
    "resnet110": ("resnet", "resnet110"),
    "wrn-28-10": ("wideresnet", "wrn_28_10"),
    "wrn-40-10": ("wideresnet", "wrn_40_10"),
    "wrn-34-10": ("wideresnet", "wrn_34_10"),
    "dm-wrn-28-10": ("wideresnet", "dm_wrn_28_10"),
}
MODELS = tuple(_MODELS)


class UnknownModelError(AbstainError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


def create(name: str, num_classes: int, **kw: Any) -> nn.Module:
    """Build the registered model ``name`` with ``num_classes`` outputs."""
    if name not in _MODELS:
        raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise AbstainError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    module, factory = _MODELS[name]
    fn = getattr(importlib.import_module(f"{__name__}.{module}"), factory)
    return fn(num_classes, **kw)


__all__ = ["create", "MODELS", "Normalize", "NormalizedModel", "UnknownModelError"]

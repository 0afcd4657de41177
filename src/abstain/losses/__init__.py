"""Training losses, one module per family, each citing its paper equation.

Every loss is ``fn(model, x, y, params) -> (loss, parts)``: ``loss`` a scalar tensor to
minimise, ``parts`` a dict of floats (each term separately, for the epoch log);
``params`` a mapping with the loss's settings (eps, norm, steps, step_size, beta, sigma,
…). Inner maximisations/minimisations call the one attack core in ``abstain.attacks``.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from ..errors import ConfigError

# name -> (module, function)
_LOSSES: dict[str, tuple[str, str]] = {
    "standard": ("standard", "standard_loss"),
    "pgd-at": ("adversarial", "pgd_at_loss"),
    "trades": ("adversarial", "trades_loss"),
    "era": ("adversarial", "era_loss"),
    "dga": ("adversarial", "dga_loss"),
    "noise": ("noise", "noise_loss"),
    "cra": ("cra", "cra_loss"),
}
LOSSES = tuple(_LOSSES)


def get(name: str) -> Callable[..., Any]:
    """The loss function registered as ``name``."""
    if name not in _LOSSES:
        raise ConfigError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    module, func = _LOSSES[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), func)


__all__ = ["get", "LOSSES"]

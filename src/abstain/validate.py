"""Argument and tensor checks shared by attacks, smoothing, metrics and the CLI."""
from __future__ import annotations

import math

import torch

from .errors import InputError

NORMS = ("linf", "l2")


def check_eps(eps: float, name: str = "eps") -> float:
    """Return ``eps`` as a float; refuse NaN, infinity and negative radii."""
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {eps!r}") from None
    if math.isnan(value) or math.isinf(value):
        raise InputError(f"{name} must be finite, got {eps!r}")
    if value < 0:
        raise InputError(f"{name} must be >= 0, got {value}")
    return value


def check_pixel_eps(eps: float, norm: str, dim: int | None = None, flag: str = "--eps") -> float:
    """Refuse a radius that makes no sense for inputs in [0, 1] (pixel space): an ℓ∞ radius
    above 1 (the ball then holds the whole box; a radius in 0–255 units, hinted as e.g.
    "8/255 = 0.0314"), or an ℓ2 radius above the box's diameter √dim."""
    e = check_eps(eps, flag)
    if norm == "linf" and e > 1:
        hint = f"; in 0-255 units {e:g}/255 = {e / 255:.4f}" if e <= 255 else ""
        raise InputError(f"{flag} {e:g} is more than 1, but inputs are in [0, 1] (pixel space){hint}")
    if norm == "l2" and dim is not None and e > math.sqrt(dim):
        raise InputError(f"{flag} {e:g} is larger than the l2 diameter {math.sqrt(dim):.4g} of the [0, 1] box of "
                         f"{dim}-dimensional inputs: every input's ball holds every other input")
    return e


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise InputError(f"unknown norm {norm!r}; expected one of {', '.join(NORMS)}")
    return norm


def check_inputs(x: torch.Tensor, *, name: str = "x", unit_box: bool = True, values: bool = True) -> None:
    """Refuse non-float tensors, NaN/Inf and (if ``unit_box``) values outside [0, 1].

    ``values=False`` checks type and shape only: the value checks read the tensor on the
    host (three device synchronisations on CUDA), which callers that pass inputs checked
    before (the losses' inner attacks) skip."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise InputError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise InputError(f"{name} must have a non-empty batch dimension, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise InputError(f"{name} is empty (a dimension of size 0), got shape {tuple(x.shape)}")
    if not values:
        return
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} contains NaN or Inf")
    if unit_box:
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(
                f"{name} must lie in [0, 1] (pixel space; normalisation lives inside the model), "
                f"got values in [{lo:.4g}, {hi:.4g}]"
            )


def check_labels(y: torch.Tensor, n: int, num_classes: int | None = None, name: str = "y") -> None:
    if not isinstance(y, torch.Tensor) or y.dim() != 1:
        raise InputError(f"{name} must be a 1-D tensor of class indices")
    if y.shape[0] != n:
        raise InputError(f"{name} has {y.shape[0]} entries but the inputs have {n}")
    if y.dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16):
        raise InputError(f"{name} must be an integer tensor, got {y.dtype}")
    if n and (int(y.min()) < 0 or (num_classes is not None and int(y.max()) >= num_classes)):
        raise InputError(f"{name} has labels outside [0, {num_classes})")

"""Interval bound propagation (IBP, Gowal et al. 2018) for small feed-forward networks.

Used to certify and train the selection network S_SN (eq. 18; the ACE-IBP baseline of
Mueller et al. 2020, Section 7.2). Bounds are element-wise boxes ``lo <= f(x') <= hi``
valid for every ``x'`` in the input box; they are computed in the network's own
activation space, layer by layer:

* affine layers (Linear, Conv2d) in centre/radius form: ``mid' = W mid + b``,
  ``rad' = |W| rad`` (exact for a single affine layer on a box);
* monotone element-wise layers (ReLU, MaxPool2d, Flatten, Normalize, BatchNorm in eval
  mode with a per-channel affine map) map the two corners, swapping where the
  per-channel scale is negative;
* ``nn.Sequential`` / :class:`abstain.models.NormalizedModel` compose the above.

The input box is the ε-ball intersected with the pixel box [0, 1] (pixel space, since
normalisation lives inside the model). For ℓ2 balls the enclosing ℓ∞ box of the same
radius is used, which contains the ℓ2 ball, so the bounds stay sound (only looser).
Anything else raises :class:`IBPUnsupportedError` naming the layer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .models import Normalize, NormalizedModel
from .validate import check_eps, check_norm

Bounds = tuple[torch.Tensor, torch.Tensor]

SUPPORTED = ("Linear", "Conv2d", "ReLU", "BatchNorm1d/2d (eval)", "Flatten", "MaxPool2d",
             "Normalize", "Identity", "Dropout (eval)", "Sequential", "NormalizedModel")


class IBPUnsupportedError(InputError):
    """A layer that interval bound propagation here does not handle."""


def input_box(x: torch.Tensor, eps: float, norm: str = "linf") -> Bounds:
    """The box ``[max(x - ε, 0), min(x + ε, 1)]`` around ``x`` (pixel space).

    For ``norm="l2"`` this is the enclosing ℓ∞ box of the ℓ2 ball (sound, looser).
    """
    eps = check_eps(eps)
    check_norm(norm)
    return (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)


def _affine(lo: torch.Tensor, hi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            op) -> Bounds:
    mid = (hi + lo) / 2
    rad = (hi - lo) / 2
    out_mid = op(mid, weight, bias)
    out_rad = op(rad, weight.abs(), None)
    return out_mid - out_rad, out_mid + out_rad


def _per_channel(lo: torch.Tensor, hi: torch.Tensor, scale: torch.Tensor,
                 shift: torch.Tensor) -> Bounds:
    shape = (1, -1) + (1,) * (lo.dim() - 2)
    s, t = scale.view(shape), shift.view(shape)
    a, b = lo * s + t, hi * s + t
    return torch.minimum(a, b), torch.maximum(a, b)


def batchnorm_affine(m: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel ``(scale, shift)`` of a BatchNorm in eval mode, ``y = scale·x + shift``
    (running statistics; the caller checks the mode)."""
    scale = torch.rsqrt(m.running_var + m.eps)
    if m.weight is not None:
        scale = scale * m.weight
    shift = -m.running_mean * scale
    if m.bias is not None:
        shift = shift + m.bias
    return scale, shift


def interval_forward(module: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> Bounds:
    """Propagate the box ``[lo, hi]`` through ``module``; returns output bounds."""
    if isinstance(module, (nn.Sequential,)):
        for layer in module:
            lo, hi = interval_forward(layer, lo, hi)
        return lo, hi
    if isinstance(module, NormalizedModel):
        lo, hi = interval_forward(module.normalize, lo, hi)
        return interval_forward(module.model, lo, hi)
    if isinstance(module, nn.Linear):
        return _affine(lo, hi, module.weight, module.bias, F.linear)
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise IBPUnsupportedError(f"IBP: Conv2d with padding_mode={module.padding_mode!r} "
                                      "is not supported (only 'zeros')")

        def conv(inp, w, b):
            return F.conv2d(inp, w, b, module.stride, module.padding, module.dilation, module.groups)

        return _affine(lo, hi, module.weight, module.bias, conv)
    if isinstance(module, nn.ReLU):
        return lo.clamp_min(0), hi.clamp_min(0)
    if isinstance(module, (nn.Flatten, nn.MaxPool2d, nn.Identity)) or (
            isinstance(module, nn.Dropout) and not module.training):
        return module(lo), module(hi)  # monotone (non-decreasing) element-wise maps
    if isinstance(module, Normalize):
        return _per_channel(lo, hi, 1.0 / module.std, -module.mean / module.std)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if module.training or module.running_mean is None:
            raise IBPUnsupportedError(
                f"IBP: {type(module).__name__} must be in eval mode with running statistics "
                "(call model.eval())")
        return _per_channel(lo, hi, *batchnorm_affine(module))
    raise IBPUnsupportedError(
        f"IBP: layer {type(module).__name__} is not supported; supported: {', '.join(SUPPORTED)}")


def ibp_bounds(model: nn.Module, x: torch.Tensor, eps: float, norm: str = "linf") -> Bounds:
    """Output bounds of ``model`` over the input box of ``x`` (see :func:`input_box`).

    Gradients flow through the bounds (used by IBP training of S_SN).
    """
    lo, hi = input_box(x, eps, norm)
    return interval_forward(model, lo, hi)


def margin_lower_bound(model: nn.Module, x: torch.Tensor, target: torch.Tensor, eps: float,
                       norm: str = "linf") -> torch.Tensor:
    """Lower bound of ``f(x')_target - max_{j != target} f(x')_j`` over the box, from the
    interval bounds of the logits (``lo_target - max_j hi_j``). Positive means the
    prediction ``target`` is certified in the box."""
    lo, hi = ibp_bounds(model, x, eps, norm)
    t = target.view(-1, 1)
    other = hi.scatter(1, t, float("-inf")).amax(dim=1)
    return lo.gather(1, t).squeeze(1) - other


__all__ = ["Bounds", "IBPUnsupportedError", "input_box", "interval_forward", "ibp_bounds",
           "margin_lower_bound", "SUPPORTED"]

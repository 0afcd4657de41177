"""Sound, cheap lower bounds on the margin of a prediction over the threat model.

For a prediction ``y = F(x)`` the robustness condition of paper eq. 2/3 holds in
``B^p_ε(x) ∩ [0, 1]^d`` if ``min_{t≠y} min_{x'} (z_y(x') - z_t(x')) > 0``. This module
computes a lower bound of that minimum, in the model's logit space, from interval bound
propagation (:mod:`abstain.ibp`, Gowal et al. 2018) with two tightenings that cost nothing:

* **the last layer elided** (Gowal et al. 2018, Sec. 3): when the model ends in a
  ``Linear`` layer ``z = W h + b``, the margin ``(w_y - w_t)·h + b_y - b_t`` is itself
  affine in ``h``, so its exact minimum over the box of ``h`` is taken instead of
  ``lo_y - hi_t``. For an affine model (one ``Linear``) this is the exact minimum over
  ``B∞_ε(x) ∩ [0, 1]^d``;
* **the ℓ2 ball at the first affine layer**: an affine map ``a·x' + c`` over
  ``B²_ε(x)`` lies in ``a·x + c ± ε·||a||_2``; this interval and the one from the
  enclosing box are both sound, so their intersection is.

Bounds are used by :mod:`abstain.attacks.strong` to skip points that are *provably*
robust. A model with a layer IBP does not handle (e.g. residual blocks) gets ``None``:
no point is skipped. Floating-point rounding is covered by requiring the bound to exceed
a tolerance that scales with the dtype's machine epsilon and the size of the logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ibp import IBPUnsupportedError, input_box, interval_forward
from ..models import Normalize, NormalizedModel

_PASSTHROUGH = (nn.Flatten, nn.Identity)


def _layers(model: nn.Module) -> list[nn.Module] | None:
    """The model as a flat list of layers (Sequential / NormalizedModel unrolled), or None
    if it is not a plain chain."""
    if isinstance(model, nn.Sequential):
        out: list[nn.Module] = []
        for m in model:
            sub = _layers(m)
            if sub is None:
                return None
            out += sub
        return out
    if isinstance(model, NormalizedModel):
        inner = _layers(model.model)
        return None if inner is None else [model.normalize] + inner
    if len(list(model.children())) == 0:
        return [model]
    return None


def _supported(layers: list[nn.Module]) -> bool:
    """Whether :func:`abstain.ibp.interval_forward` handles every layer (checked by type
    before any computation, so unsupported models cost nothing)."""
    ok = (nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten, nn.MaxPool2d, nn.Identity, Normalize,
          nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout)
    for m in layers:
        if not isinstance(m, ok):
            return False
        if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            return False
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.running_mean is None:
            return False
    return True


def _first_affine_l2(layers: list[nn.Module], x: torch.Tensor, eps: float
                     ) -> tuple[int, torch.Tensor, torch.Tensor] | None:
    """Interval of the first affine layer's output over the ℓ2 ball ``B²_ε(x)``.

    Only ``Normalize``, ``Flatten`` and ``Identity`` may precede it; ``Normalize`` is
    folded in (``(x - μ)/σ``), so the map is ``a·x' + c`` and its range over the ball is
    ``a·x + c ± ε·||a||_2`` (for a convolution, the kernel norm bounds ``||a||_2`` of every
    output, padding only removing terms). Returns (index of the layer, lower, upper).
    """
    h = x
    inv_std: torch.Tensor | None = None
    for i, m in enumerate(layers):
        if isinstance(m, Normalize):
            shape = (1, -1) + (1,) * (h.dim() - 2)
            inv_std = (1.0 / m.std).to(h.dtype).view(shape) * torch.ones_like(h[:1])
            h = m(h)
        elif isinstance(m, _PASSTHROUGH):
            h = m(h)
            if inv_std is not None:
                inv_std = m(inv_std)
        elif isinstance(m, nn.Linear):
            mid = F.linear(h, m.weight, m.bias)
            w = m.weight if inv_std is None else m.weight * inv_std.reshape(1, -1)
            rad = eps * w.norm(dim=1)
            return i, mid - rad, mid + rad
        elif isinstance(m, nn.Conv2d):
            if inv_std is not None and inv_std.dim() != 4:
                return None
            mid = F.conv2d(h, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
            w = m.weight
            if inv_std is not None:
                per_in = inv_std[0, :, 0, 0]
                if m.groups != 1:
                    return None
                w = w * per_in.view(1, -1, 1, 1)
            rad = eps * w.flatten(1).norm(dim=1).view(1, -1, 1, 1)
            return i, mid - rad, mid + rad
        else:
            return None
    return None


@torch.no_grad()
def margin_lower_bound(model: nn.Module, x: torch.Tensor, pred: torch.Tensor, eps: float,
                       norm: str = "linf") -> torch.Tensor | None:
    """A sound lower bound of ``min_{t≠y} min_{x' ∈ B^p_ε(x) ∩ [0,1]^d} z_y(x') - z_t(x')``
    for ``y = pred``, per sample (N,), in logit space; ``None`` if the model is not a chain
    of layers that :mod:`abstain.ibp` supports. The caller puts the model in eval mode."""
    layers = _layers(model)
    if layers is None or not layers or not _supported(layers):
        return None
    last = layers[-1] if isinstance(layers[-1], nn.Linear) else None
    body = layers[:-1] if last is not None else layers
    lo, hi = input_box(x, eps, norm)
    start = 0
    ball = _first_affine_l2(layers, x, eps) if norm == "l2" else None
    try:
        if ball is not None and ball[0] < len(body):
            i, blo, bhi = ball
            for m in body[:i + 1]:
                lo, hi = interval_forward(m, lo, hi)
            lo, hi = torch.maximum(lo, blo), torch.minimum(hi, bhi)
            start = i + 1
        for m in body[start:]:
            lo, hi = interval_forward(m, lo, hi)
    except IBPUnsupportedError:
        return None
    y = pred.view(-1, 1)
    if last is None:   # no elision: lo_y - max_{t≠y} hi_t
        return lo.gather(1, y).squeeze(1) - hi.scatter(1, y, float("-inf")).amax(dim=1)
    lo, hi = lo.flatten(1), hi.flatten(1)
    w, b = last.weight, last.bias
    c = w[pred].unsqueeze(1) - w.unsqueeze(0)                      # (N, K, h): w_y - w_t
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    m = (c * mid.unsqueeze(1)).sum(-1) - (c.abs() * rad.unsqueeze(1)).sum(-1)
    if b is not None:
        m = m + (b[pred].unsqueeze(1) - b.unsqueeze(0))
    if ball is not None and ball[0] == len(layers) - 1:
        # the model is affine: the margin's range over the ℓ2 ball is exact up to the box
        i, _, _ = ball
        xf = x.flatten(1)
        inv = torch.ones_like(xf[:1])
        for layer in layers[:-1]:        # Normalize / Flatten / Identity only
            if isinstance(layer, Normalize):
                shape = (1, -1) + (1,) * (x.dim() - 2)
                inv = ((1.0 / layer.std).to(x.dtype).view(shape) * torch.ones_like(x[:1])).flatten(1)
        zc = _last_input(layers, x)
        ball_m = (c * zc.unsqueeze(1)).sum(-1) - eps * (c * inv.unsqueeze(1)).norm(dim=-1)
        if b is not None:
            ball_m = ball_m + (b[pred].unsqueeze(1) - b.unsqueeze(0))
        m = torch.maximum(m, ball_m)
    return m.scatter(1, y, float("inf")).amin(dim=1)


def _last_input(layers: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    h = x
    for m in layers[:-1]:
        h = m(h)
    return h.flatten(1)


def rounding_tolerance(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample slack that a bound must exceed to count as a proof despite floating-point
    rounding: ``1e3 · machine ε · (1 + max |z|)`` (1.2e-4 relative in float32)."""
    scale = 1.0 + logits.detach().abs().amax(dim=1)
    return 1e3 * torch.finfo(logits.dtype).eps * scale


def certified(model: nn.Module, x: torch.Tensor, pred: torch.Tensor, logits: torch.Tensor,
              eps: float, norm: str = "linf") -> torch.Tensor | None:
    """Points whose prediction ``pred`` is provably constant on ``B^p_ε(x) ∩ [0, 1]^d``
    (bool (N,)), or ``None`` when the model is not supported (nothing is proven)."""
    lb = margin_lower_bound(model, x, pred, eps, norm)
    if lb is None:
        return None
    return lb > rounding_tolerance(logits)


__all__ = ["margin_lower_bound", "certified", "rounding_tolerance"]

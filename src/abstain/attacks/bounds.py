"""Sound, cheap lower bounds on the margin of a prediction over the threat model.

For a prediction ``y = F(x)`` the robustness condition of paper eq. 2/3 holds in
``B^p_ε(x) ∩ [0, 1]^d`` if ``min_{t≠y} min_{x'} (z_y(x') - z_t(x')) > 0``. This module
computes a lower bound of that minimum, in the model's logit space, from interval bound
propagation (IBP, Gowal et al. 2018) on the model's ``torch.fx`` graph
(:mod:`abstain.attacks.interval`: Linear, Conv1d/2d, eval BatchNorm, ReLU, pooling, reshapes,
residual additions, ℓ∞ and ℓ2 balls), with one linear (CROWN-style, Zhang et al. 2018,
"Efficient neural network robustness certification with general activation functions")
backward step where it is free:

* **the margin through the last layer** (Gowal et al. 2018, Sec. 3; the first backward step
  of CROWN): when the model's output is a ``Linear`` layer ``z = W h + b``, the margin
  ``(w_y - w_t)·h + b_y - b_t`` is itself affine in ``h``, so its exact minimum over the box
  of ``h`` is taken instead of ``lo_y - hi_t``. For an affine model (one ``Linear``) this is
  the exact minimum over ``B∞_ε(x) ∩ [0, 1]^d``; for ℓ2, when ``h`` is an element-wise
  affine map ``s ⊙ x' + c`` of the input, ``min = (w_y - w_t)·h(x) + b_y - b_t -
  ε·||(w_y - w_t) ⊙ s||₂`` over the ball is used as well (the larger of two sound bounds).

``bounds="crown"`` / ``"crown-full"`` also takes full CROWN back-substitution through the
ReLUs and max pools (:mod:`abstain.attacks.crown`, interval or CROWN intermediate bounds)
and keeps the larger bound. Not the default: on the digits and MNIST-1D TRADES models at the
study radii it proves no more points and costs 0.4-0.6 of an APGD-CE-40 run (CROWN
intermediates: 8 % of the MNIST-1D points at about 100× the cost; ``bench/bounds.py``).

Bounds are used by :mod:`abstain.attacks.strong` to skip points that are *provably*
robust. A model with a node the walk does not handle gets ``None``: no point is skipped.
Floating-point rounding is covered by requiring the bound to exceed a tolerance that scales
with the dtype's machine epsilon and the size of the logits.
"""
from __future__ import annotations

import torch
from torch import nn

from .crown import crown_margin_lower_bound
from .interval import trace_intervals


BOUNDS = ("ibp", "crown", "crown-full")


@torch.no_grad()
def margin_lower_bound(model: nn.Module, x: torch.Tensor, pred: torch.Tensor, eps: float,
                       norm: str = "linf", bounds: str = "ibp") -> torch.Tensor | None:
    """A sound lower bound of ``min_{t≠y} min_{x' ∈ B^p_ε(x) ∩ [0,1]^d} z_y(x') - z_t(x')``
    for ``y = pred``, per sample (N,), in logit space; ``None`` if the model has a node that
    :mod:`abstain.attacks.interval` does not handle. ``bounds``: ``"ibp"`` (interval bounds
    and the last layer), ``"crown"`` / ``"crown-full"``: the larger of that and the CROWN
    bound of :mod:`abstain.attacks.crown` with interval / CROWN intermediate bounds (both
    sound, so is their maximum; slower). The caller puts the model in eval mode."""
    if bounds not in BOUNDS:
        raise ValueError(f"bounds must be one of {BOUNDS}, not {bounds!r}")
    lb = _ibp_margin(model, x, pred, eps, norm)
    if lb is None or bounds == "ibp":
        return lb
    cb = crown_margin_lower_bound(model, x, pred, eps, norm, "crown" if bounds == "crown-full" else "ibp")
    return lb if cb is None else torch.maximum(lb, cb)


def _ibp_margin(model: nn.Module, x: torch.Tensor, pred: torch.Tensor, eps: float,
                norm: str) -> torch.Tensor | None:
    """The interval bound of :func:`margin_lower_bound` (the margin through the last layer)."""
    tr = trace_intervals(model, x, eps, norm)
    if tr is None:
        return None
    y = pred.view(-1, 1)
    if tr.last is None or tr.last_in is None:   # no last Linear: lo_y - max_{t≠y} hi_t
        lo, hi = tr.out.lo, tr.out.hi
        return lo.gather(1, y).squeeze(1) - hi.scatter(1, y, float("-inf")).amax(dim=1)
    h = tr.last_in
    lo, hi = h.lo.flatten(1), h.hi.flatten(1)
    w, b = tr.last
    c = w[pred].unsqueeze(1) - w.unsqueeze(0)                      # (N, K, h): w_y - w_t
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    m = (c * mid.unsqueeze(1)).sum(-1) - (c.abs() * rad.unsqueeze(1)).sum(-1)
    if h.diag is not None:      # ℓ2 and h = s ⊙ x' + c: the margin's exact range over the ball
        hc, s = h.diag[0].flatten(1), h.diag[1].flatten(1)
        ball_m = (c * hc.unsqueeze(1)).sum(-1) - eps * (c * s.unsqueeze(1)).norm(dim=-1)
        m = torch.maximum(m, ball_m)
    if b is not None:
        m = m + (b[pred].unsqueeze(1) - b.unsqueeze(0))
    return m.scatter(1, y, float("inf")).amin(dim=1)


def rounding_tolerance(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample slack that a bound must exceed to count as a proof despite floating-point
    rounding: ``1e3 · machine ε · (1 + max |z|)`` (1.2e-4 relative in float32)."""
    scale = 1.0 + logits.detach().abs().amax(dim=1)
    return 1e3 * torch.finfo(logits.dtype).eps * scale


def certified(model: nn.Module, x: torch.Tensor, pred: torch.Tensor, logits: torch.Tensor,
              eps: float, norm: str = "linf", bounds: str = "ibp") -> torch.Tensor | None:
    """Points whose prediction ``pred`` is provably constant on ``B^p_ε(x) ∩ [0, 1]^d``
    (bool (N,)), or ``None`` when the model is not supported (nothing is proven);
    ``bounds`` as in :func:`margin_lower_bound`."""
    lb = margin_lower_bound(model, x, pred, eps, norm, bounds)
    if lb is None:
        return None
    return lb > rounding_tolerance(logits)


__all__ = ["margin_lower_bound", "certified", "rounding_tolerance", "BOUNDS"]

"""Points on which a gradient attack is blind: its loss has an all-zero or non-finite input
gradient at the clean input.

APGD-CE (the paper's protocol, Section 7) follows ∇_x CE(f(x), F(x)); where softmax
saturates (logits scaled by 10³⁰ give the same predictions) that gradient is exactly 0 and
the attack never moves, so such points look robust although nothing was tried; a NaN/inf
gradient stalls it alike. The strong attack steps along the logit margin ``z_t - z_y``,
which does not saturate. :func:`blind_points` probes the loss each attack starts with at x
(one forward-backward pass per point); :func:`blind_warning` words the result for users.
"""
from __future__ import annotations

import torch
from torch import nn

from .core import frozen_eval
from .objectives import TargetedMargin


class GradientWarning(UserWarning):
    """Some points gave the attack an all-zero or non-finite input gradient."""


def blind_points(model: nn.Module, x: torch.Tensor, pred: torch.Tensor, attack: str) -> torch.Tensor:
    """(N,) bool: the input gradient of the attack's first loss at ``x`` is all zero or not
    finite. Loss: ``CE(f(x), pred)`` for ``"apgd-ce"`` and ``"ensemble"`` (their first
    stage); for ``"strong"`` the margin ``z_t - z_pred`` towards the strongest other class
    t (its ranking and main run step on margins). The model runs in eval mode with frozen
    parameters (restored after)."""
    with frozen_eval(model):
        z = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(z)
            if attack == "strong" and logits.shape[1] > 1:
                t = logits.detach().scatter(1, pred.view(-1, 1), float("-inf")).argmax(dim=1)
                val = TargetedMargin()(logits, torch.stack([pred, t], dim=1))
            else:
                val = -nn.functional.cross_entropy(logits, pred, reduction="none")
            g, = torch.autograd.grad(val.sum(), z)
    g = g.flatten(1)
    return ~torch.isfinite(g).all(dim=1) | (g == 0).all(dim=1)


def blind_warning(n_blind: int, n: int, attack: str) -> str | None:
    """A one-line warning when ``n_blind`` of ``n`` points had an all-zero or non-finite
    gradient (None when there are none); suggests the strong attack for gradient-blind
    CE attacks."""
    if n_blind == 0:
        return None
    hint = ("; these points look robust although the attack could not move: use --attack strong "
            "(attack='strong', margin steps do not saturate)" if attack != "strong" else
            "; their robustness flags rest on the corners and random starts alone")
    return (f"{attack}: the input gradient was all zero or not finite on {n_blind} of {n} points "
            f"({100.0 * n_blind / max(n, 1):.1f} %){hint}")


__all__ = ["GradientWarning", "blind_points", "blind_warning"]

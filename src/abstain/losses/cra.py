"""Certified robustness abstain training: the paper's L_CRA, eq. 9 with the radius of eq. 11.

    L_CRA = β · L_noise + [1/k Σ_j (1 − f_θ(x + η_j)_y)] · CR(f_θ, (x, y))           (eq. 9)

* L_noise (eq. 10) is estimated with the same k fresh noisy copies: the mean over j of
  ℓ_CE(f_θ(x + η_j), y) (an unbiased Monte Carlo estimate of E_η ℓ_CE(f_θ(x + η), y)).
* The soft inaccuracy qualifier 1/k Σ_j (1 − f_θ(x + η_j)_y) uses the plain softmax f_θ
  (Section 4.2: the misprediction probability of the smoothed classifier).
* CR is eq. 11 on the softmax at inverse temperature Γ averaged over the same k copies
  (``abstain.smoothing.radius``; Φ⁻¹ made safe near 0 and 1 there). The paper wants to
  "directly penalize robustness of the smoothed classifier G_θ" on inaccurate samples, i.e.
  shrink the radius of G's *prediction*. Eq. 11 as printed takes class y against the best
  other class; for an inaccurate sample that is negative, and minimising it would push p_y
  further down, making the wrong prediction *more* robust. We therefore use, by default, the
  radius of the soft smoothed prediction (top-1 vs top-2 class), which equals the printed
  eq. 11 whenever the prediction is y and is what the authors' code (robust-abstain,
  ``revcert_radius_loss``) computes. ``params["cr_class"] = "label"`` gives the literal form.
The qualifier is not detached (eq. 9 is differentiated as written).

Defaults (Appendix A.2): k = 16, Γ = 4, β = 1. ``params``: ``sigma`` (required), ``k``,
``gamma``, ``beta``, ``cr_class`` ("pred" | "label").
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..smoothing.radius import noisy_logits, smoothed_radius, soft_smoothed_probs
from .noise import sigma_param

DEFAULTS = {"k": 16, "gamma": 4.0, "beta": 1.0, "cr_class": "pred"}


def cra_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             params: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_CRA (eq. 9), the batch mean; see the module docstring for each term.

    Returns ``(loss, parts)`` with detached batch means ``noise_ce`` (L_noise),
    ``qualifier`` (soft inaccuracy), ``radius`` (CR, eq. 11) and ``penalty`` (qualifier · CR).
    """
    sigma = sigma_param(params)
    p = {**DEFAULTS, **{k: v for k, v in (params or {}).items() if k in DEFAULTS}}
    k, gamma, beta = int(p["k"]), float(p["gamma"]), float(p["beta"])
    if p["cr_class"] not in ("pred", "label"):
        raise ConfigError(f"cra: cr_class must be 'pred' or 'label', got {p['cr_class']!r}")
    if k < 1 or gamma <= 0 or beta < 0:
        raise ConfigError(f"cra: need k >= 1, gamma > 0, beta >= 0; got k={k}, gamma={gamma}, beta={beta}")
    logits = noisy_logits(model, x, sigma, k)                          # (N, k, C), fresh noise
    n, _, c = logits.shape
    ce = F.cross_entropy(logits.reshape(n * k, c), y.repeat_interleave(k), reduction="none")
    noise_ce = ce.view(n, k).mean(1)                                   # eq. 10, k draws
    qualifier = 1.0 - F.softmax(logits, dim=-1).gather(2, y.view(n, 1, 1).expand(n, k, 1))[..., 0].mean(1)
    probs = soft_smoothed_probs(logits, gamma)
    radius = smoothed_radius(probs, sigma, y if p["cr_class"] == "label" else None)   # eq. 11
    penalty = qualifier * radius
    loss = (beta * noise_ce + penalty).mean()
    return loss, {"noise_ce": noise_ce.mean().detach(), "qualifier": qualifier.mean().detach(),
                  "radius": radius.mean().detach(), "penalty": penalty.mean().detach()}

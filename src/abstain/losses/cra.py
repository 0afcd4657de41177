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

``variant = "authors"``: what the authors' code computes (ymerkli/robust-abstain
``loss/revcert.py::revcert_radius_loss`` driven by ``train/train_revcert.py`` and
``scripts/train/revcert/L2/train_cifar10.sh``), three differences (docs/fidelity.md):

* the noise term is ℓ_CE(1/k Σ_j z(x + η_j), y): the cross-entropy of the LOGITS averaged
  over the k noisy copies, not the average of the k cross-entropies (eq. 10 estimated);
* β = 0.75 (their scripts' ``--revadv-beta 0.75``; the paper's text says 1), multiplied by
  0.1 after 0-based epochs 20 and 40 (their ``StepScheduler(20, 0.1)`` steps at the END of
  epoch 20 and 40): β(e) = β·0.1^{[e > 20] + [e > 40]}. The epoch comes from
  ``params["epoch"]`` (0-based), which the trainer sets; without it the loss refuses;
* the radius is CR with the top-2 soft smoothed probabilities shifted as theirs,
  σ/2 [Φ⁻¹(p̂_(1) − 10⁻⁶) − Φ⁻¹(p̂_(2) + 10⁻⁶)] (``cr_class`` must be "pred").
The qualifier is the same in both. Their noisy inputs are not clamped either.

Defaults (Appendix A.2): k = 16, Γ = 4, β = 1 (``variant = "paper"``, the default: see
:mod:`abstain.losses.variants`) or 0.75 (``"authors"``). ``params``: ``sigma``
(required), ``k``, ``gamma``, ``beta``, ``cr_class`` ("pred" | "label"), ``variant``,
``epoch`` (0-based, set by the trainer; used by the authors' β schedule only), ``generator``
(the noise's ``torch.Generator``, set by the trainer; torch's global RNG without it).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..smoothing.radius import noisy_logits, smoothed_radius, soft_smoothed_probs
from .noise import sigma_param
from .variants import variant_param

DEFAULTS = {"k": 16, "gamma": 4.0, "beta": 1.0, "cr_class": "pred"}
AUTHORS_BETA = 0.75               # scripts/train/revcert/L2/train_cifar10.sh: --revadv-beta 0.75
AUTHORS_BETA_STEP = 20            # args_factory: revadv-beta-step 20, revadv-beta-gamma 0.1
AUTHORS_BETA_FACTOR = 0.1
AUTHORS_ICDF_SHIFT = 1e-6         # revcert_radius_loss: out0 -= 1e-6; out1 += 1e-6


def authors_beta(beta: float, epoch: int) -> float:
    """β of 0-based ``epoch`` under the authors' StepScheduler(20, 0.1): β after epoch 20
    and again after epoch 40 multiplied by 0.1 (their ``step`` runs at the end of an epoch
    ``e`` with ``e > 0`` and ``e % 20 == 0``)."""
    if epoch < 0:
        raise ConfigError(f"cra: epoch must be >= 0, got {epoch}")
    decays = sum(1 for m in (AUTHORS_BETA_STEP, 2 * AUTHORS_BETA_STEP) if epoch > m)
    return beta * AUTHORS_BETA_FACTOR ** decays


def authors_radius(probs: torch.Tensor, sigma: float) -> torch.Tensor:
    """The authors' CR: σ/2 [Φ⁻¹(p̂_(1) − 1e-6) − Φ⁻¹(p̂_(2) + 1e-6)] on the top two soft
    smoothed probabilities (Φ⁻¹ in float64, returned in ``probs``' dtype)."""
    top2 = probs.topk(2, dim=1).values
    a = torch.special.ndtri((top2[:, 0] - AUTHORS_ICDF_SHIFT).double())
    b = torch.special.ndtri((top2[:, 1] + AUTHORS_ICDF_SHIFT).double())
    return (0.5 * sigma * (a - b)).to(probs.dtype)


def cra_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             params: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_CRA (eq. 9), the batch mean; see the module docstring for each term.

    Returns ``(loss, parts)`` with detached batch means ``noise_ce`` (L_noise),
    ``qualifier`` (soft inaccuracy), ``radius`` (CR, eq. 11) and ``penalty`` (qualifier · CR).
    """
    sigma = sigma_param(params)
    variant = variant_param(params)
    authors = variant == "authors"
    defaults = {**DEFAULTS, "beta": AUTHORS_BETA} if authors else DEFAULTS
    given = {k: v for k, v in (params or {}).items() if k in DEFAULTS and v is not None}
    p = {**defaults, **given}
    k, gamma, beta = int(p["k"]), float(p["gamma"]), float(p["beta"])
    if p["cr_class"] not in ("pred", "label"):
        raise ConfigError(f"cra: cr_class must be 'pred' or 'label', got {p['cr_class']!r}")
    if k < 1 or gamma <= 0 or beta < 0:
        raise ConfigError(f"cra: need k >= 1, gamma > 0, beta >= 0; got k={k}, gamma={gamma}, beta={beta}")
    if authors:
        if p["cr_class"] != "pred":
            raise ConfigError("cra: variant = \"authors\" takes the radius of the top class "
                              "(cr_class = \"pred\"); cr_class = \"label\" contradicts it")
        if (params or {}).get("epoch") is None:
            raise ConfigError("cra: variant = \"authors\" decays beta by epoch and needs "
                              "params[\"epoch\"] (0-based; the trainer sets it)")
        beta = authors_beta(beta, int(params["epoch"]))
    # fresh noise from the trainer's per-(seed, epoch, batch, rank) generator when given: the
    # global CUDA RNG is seeded alike on every rank, which would give every rank the same noise
    logits = noisy_logits(model, x, sigma, k, (params or {}).get("generator"))   # (N, k, C)
    n, _, c = logits.shape
    if authors:   # CE of the logits averaged over the k copies
        noise_ce = F.cross_entropy(logits.mean(1), y, reduction="none")
    else:         # eq. 10 estimated with the k draws: the mean of the k cross-entropies
        ce = F.cross_entropy(logits.reshape(n * k, c), y.repeat_interleave(k), reduction="none")
        noise_ce = ce.view(n, k).mean(1)
    qualifier = 1.0 - F.softmax(logits, dim=-1).gather(2, y.view(n, 1, 1).expand(n, k, 1))[..., 0].mean(1)
    probs = soft_smoothed_probs(logits, gamma)
    if authors:
        radius = authors_radius(probs, sigma)
    else:
        radius = smoothed_radius(probs, sigma, y if p["cr_class"] == "label" else None)   # eq. 11
    penalty = qualifier * radius
    loss = (beta * noise_ce + penalty).mean()
    return loss, {"noise_ce": noise_ce.mean().detach(), "qualifier": qualifier.mean().detach(),
                  "radius": radius.mean().detach(), "penalty": penalty.mean().detach()}

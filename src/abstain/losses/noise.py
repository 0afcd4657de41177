"""Gaussian noise augmentation (Cohen et al., 2019): the paper's L_noise, eq. 10."""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..smoothing.smooth import check_sigma


def sigma_param(params: Mapping[str, Any] | None) -> float:
    """The noise level ``params["sigma"]`` (required, > 0)."""
    if not params or "sigma" not in params:
        raise ConfigError("the noise/cra losses need loss_params.sigma (the Gaussian noise level)")
    return check_sigma(params["sigma"])


def noise_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               params: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_noise = ℓ_CE(f_θ(x + η), y), η ~ N(0, σ² I) (eq. 10), the batch mean.

    Pixel space; the noisy input is not clamped. The noise is drawn FRESH at every call and
    independently for every sample (ART PR #1678 reused one draw), from torch's global RNG,
    which the trainer seeds. ``params``: ``sigma`` (required).
    Returns ``(loss, {"noise_ce": detached loss})``.
    """
    sigma = sigma_param(params)
    noisy = x + sigma * torch.randn_like(x)
    loss = F.cross_entropy(model(noisy), y)
    return loss, {"noise_ce": loss.detach()}

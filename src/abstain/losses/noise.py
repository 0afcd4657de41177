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


def gaussian_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, I) noise of ``x``'s shape, dtype and device, drawn from ``generator`` when given.

    Why a generator: the global CUDA RNG is seeded identically on every torchrun rank, so
    noise drawn from it is the same on every rank (every rank would add the same noise)."""
    if generator is None:
        return torch.randn_like(x)
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return noise.to(x.device, non_blocking=True)


def noise_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               params: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_noise = ℓ_CE(f_θ(x + η), y), η ~ N(0, σ² I) (eq. 10), the batch mean.

    Pixel space; the noisy input is not clamped. The noise is drawn FRESH at every call and
    independently for every sample (ART PR #1678 reused one draw), from
    ``params["generator"]`` when given (the trainer passes its generator, seeded per
    (seed, epoch, batch, rank), so every torchrun rank draws its own noise and a resumed run
    draws the same), else from torch's global RNG. ``params``: ``sigma`` (required),
    ``generator`` (optional). Returns ``(loss, {"noise_ce": detached loss})``.
    """
    sigma = sigma_param(params)
    noisy = x + sigma * gaussian_like(x, params.get("generator") if params else None)
    loss = F.cross_entropy(model(noisy), y)
    return loss, {"noise_ce": loss.detach()}

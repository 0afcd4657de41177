"""The differentiable certified radius of the soft smoothed classifier (paper eq. 11).

Zhai et al. (MACER, ICLR 2020) replace the hard votes of randomized smoothing by the softmax
of the logits at inverse temperature Γ, averaged over k noisy copies:

    p̂(x)_c = 1/k Σ_j softmax(Γ · z(x + η_j))_c,  η_j ~ N(0, σ² I)

    CR = σ/2 · [Φ⁻¹(p̂_a) − Φ⁻¹(max_{c ≠ a} p̂_c)]                          (eq. 11)

with ``a`` the label y (eq. 11 as printed) or the soft smoothed prediction argmax p̂ (the radius
of G's own prediction, what CRA penalises; see ``abstain.losses.cra``). Everything is in pixel
space; the noise is not clamped to [0, 1].

Numerically safe Φ⁻¹: p̂ can be exactly 0 or 1 in float32 (Φ⁻¹ = ∓∞, NaN gradients). We map
p ↦ ε + (1 − 2ε)·p with ε = 1e-6 before Φ⁻¹ (an affine squeeze into [ε, 1 − ε]: monotone,
differentiable everywhere, gradient never zeroed as a hard clamp would) and evaluate Φ⁻¹ in
float64. So |Φ⁻¹| ≤ Φ⁻¹(1 − 1e-6) ≈ 4.753 and |CR| ≤ 4.753 σ; the squeeze moves Φ⁻¹ by at most
4e-5 for p in [0.01, 0.99].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .smooth import check_count, check_sigma

ICDF_EPS = 1e-6


def safe_icdf(p: torch.Tensor, eps: float = ICDF_EPS) -> torch.Tensor:
    """Φ⁻¹(ε + (1 − 2ε)·p), computed in float64, returned in ``p``'s dtype (see module doc)."""
    q = p.double().mul(1.0 - 2.0 * eps).add(eps)
    return torch.special.ndtri(q).to(p.dtype)


def noisy_logits(model: nn.Module, x: torch.Tensor, sigma: float, k: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Logits at k fresh noisy copies of every input: shape (N, k, C). Gradients flow to the
    model's parameters (and to x). Noise is drawn anew at every call."""
    sigma, k = check_sigma(sigma), check_count(k, "k")
    n = x.shape[0]
    rep = x.unsqueeze(1).expand(n, k, *x.shape[1:])
    noise = torch.randn(rep.shape, generator=generator, device=x.device, dtype=x.dtype)
    out = model((rep + sigma * noise).reshape(n * k, *x.shape[1:]))
    return out.reshape(n, k, -1)


def soft_smoothed_probs(logits: torch.Tensor, gamma: float) -> torch.Tensor:
    """p̂ = 1/k Σ_j softmax(Γ · logits_j): (N, k, C) logits → (N, C) probabilities."""
    if not (gamma > 0):
        raise InputError(f"the inverse temperature gamma must be > 0, got {gamma!r}")
    return F.softmax(gamma * logits, dim=-1).mean(1)


def smoothed_radius(probs: torch.Tensor, sigma: float, y: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 11 from soft smoothed probabilities ``probs`` (N, C): σ/2 [Φ⁻¹(p̂_a) − Φ⁻¹(p̂_b)].

    ``y=None``: a = argmax p̂ (the soft smoothed prediction), b the runner-up, so CR ≥ 0.
    ``y`` given: a = y, b = the most probable other class (the literal eq. 11; negative when
    y is not the prediction)."""
    sigma = check_sigma(sigma)
    if probs.dim() != 2 or probs.shape[1] < 2:
        raise InputError(f"probs must have shape (N, C) with C >= 2, got {tuple(probs.shape)}")
    if y is None:
        top2 = probs.topk(2, dim=1).values
        p_a, p_b = top2[:, 0], top2[:, 1]
    else:
        p_a = probs.gather(1, y[:, None])[:, 0]
        others = probs.masked_fill(F.one_hot(y, probs.shape[1]).bool(), float("-inf"))
        p_b = others.max(1).values
    return 0.5 * sigma * (safe_icdf(p_a) - safe_icdf(p_b))

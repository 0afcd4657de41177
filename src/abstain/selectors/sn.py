"""Selection network S_SN (eq. 18; the ACE-IBP baseline of Mueller et al. 2020).

A separate small network s: X -> R is trained to predict where the classifier F is robust
and accurate (target t(x) = 1{F(x) = y ∧ F robust in B_ε(x)}, robustness from
:func:`abstain.attacks.is_robust`), with interval bound propagation (Gowal et al. 2018) as
in ACE-IBP: the loss mixes the clean binary cross-entropy with the cross-entropy of the
worst-case score over the ε-box (the IBP lower bound for t = 1, the upper bound for t = 0),
the mixing weight κ going from 1 to ``kappa_end`` and the training radius ramping up from 0.

S_SN(x) = 1{σ(s(x)) ≥ τ} (σ the logistic function, so τ ∈ [0, 1) as for softmax response).
Robust selection (eq. 14) is *certified* by IBP: σ(lower bound of s over B_ε(x)) ≥ τ; robust
abstention likewise: σ(upper bound) < τ. For ℓ2 the enclosing ℓ∞ box is used (sound).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import is_robust
from ..errors import InputError
from ..seeds import generator
from ..ibp import ibp_bounds
from ..models import Normalize
from ..utils import eval_mode
from ..records import column
from .base import ThresholdSelector, predict


def selection_net(input_shape: Sequence[int], hidden: int = 128, depth: int = 2,
                  mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)) -> nn.Module:
    """A small ReLU MLP s: X -> R (one logit) on flattened inputs (IBP-friendly)."""
    d = 1
    for s in input_shape:
        d *= int(s)
    layers: list[nn.Module] = [Normalize(mean, std), nn.Flatten()]
    width = d
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def selection_targets(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                      norm: str = "linf", steps: int = 40, seed: int = 0,
                      batch_size: int = 1024, attack: str | None = None) -> torch.Tensor:
    """t(x) = 1{F(x) = y ∧ F robust in B_ε(x)}: where F is robust and accurate
    (APGD in chunks of ``batch_size``; random starts seeded per sample index)."""
    pred = predict(model, x)
    rob = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for i in range(0, x.shape[0], batch_size):
        ids = torch.arange(i, min(i + batch_size, x.shape[0]), device=x.device)
        with torch.enable_grad():
            rob[ids] = is_robust(model, x[ids], eps=eps, norm=norm, steps=steps, sample_ids=ids,
                                 attack=attack, generator=generator(seed)).to(torch.bool)
    return (pred == y) & rob


def train_selection_network(net: nn.Module, x: torch.Tensor, t: torch.Tensor, *, eps: float,
                            norm: str = "linf", epochs: int = 60, batch_size: int = 64,
                            lr: float = 3e-3, kappa_end: float = 0.5, ramp: float = 0.5,
                            eps_train_factor: float = 1.1, seed: int = 0) -> nn.Module:
    """Train ``net`` on targets ``t`` with the ACE-IBP loss (module doc); returns it in eval
    mode. Positives and negatives are weighted to balance the classes. ``ramp`` is the
    fraction of epochs over which κ and the training radius (``eps_train_factor``·ε) ramp."""
    if x.shape[0] != t.shape[0] or x.shape[0] == 0:
        raise InputError("selection network training needs matching, non-empty x and targets")
    g = generator(seed, "sn-train")
    tf = t.float().to(x.device)
    pos = float(tf.mean())
    pos_weight = torch.tensor((1 - pos) / pos if 0 < pos < 1 else 1.0, device=x.device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps_per_epoch = max(1, (x.shape[0] + batch_size - 1) // batch_size)
    total = epochs * steps_per_epoch
    ramp_steps = max(1, int(ramp * total))
    net.train()
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g).to(x.device)
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i:i + batch_size]
            xb, tb = x[idx], tf[idx]
            frac = min(1.0, step / ramp_steps)
            kappa = 1.0 - (1.0 - kappa_end) * frac
            e = eps * eps_train_factor * frac
            clean = net(xb).squeeze(1)
            lo, hi = ibp_bounds(net, xb, e, norm)
            worst = torch.where(tb > 0.5, lo.squeeze(1), hi.squeeze(1))
            loss = (kappa * F.binary_cross_entropy_with_logits(clean, tb, pos_weight=pos_weight)
                    + (1 - kappa) * F.binary_cross_entropy_with_logits(worst, tb, pos_weight=pos_weight))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return net.eval()


class SelectionNetwork(ThresholdSelector):
    """S_SN(x) = 1{σ(s(x)) ≥ τ} for classifier ``model`` and selection network ``net``."""

    name = "sn"

    def __init__(self, model: nn.Module, net: nn.Module, *, tau: float = 0.5, eps: float,
                 norm: str = "linf", steps: int = 40, seed: int = 0, attack: str | None = None) -> None:
        super().__init__(model, tau=tau, eps=eps, norm=norm, steps=steps, seed=seed, attack=attack)
        self.net = net

    @torch.no_grad()
    def _score_bounds(self, x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with eval_mode(self.net):
            score = torch.sigmoid(self.net(x).squeeze(1))
            lo, hi = ibp_bounds(self.net, x, eps, self.norm)
        return score, torch.sigmoid(lo.squeeze(1)), torch.sigmoid(hi.squeeze(1))

    def select(self, x: torch.Tensor) -> torch.Tensor:
        return self._score_bounds(x, 0.0)[0] >= self.tau

    def robust_select(self, x: torch.Tensor, eps: float | None = None,
                      norm: str | None = None) -> torch.Tensor:
        """Certified by IBP: σ(lower bound of s over B_eps(x)) ≥ τ."""
        score, lo, _ = self._score_bounds(x, self._adversary(eps, norm))
        return (lo >= self.tau) & (score >= self.tau)

    def robust_abstain(self, x: torch.Tensor, eps: float | None = None) -> torch.Tensor:
        """Certified by IBP: σ(upper bound of s over B_eps(x)) < τ."""
        score, _, hi = self._score_bounds(x, self._adversary(eps, None))
        return (hi < self.tau) & (score < self.tau)

    def records(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Columns ``pred``, ``robust@ε`` (is_robust of F), ``score`` = σ(s(x)) and the IBP
        bounds ``score_lo@ε``, ``score_hi@ε`` of σ(s) over B_ε(x)."""
        ids = None if ids is None else torch.as_tensor(ids).reshape(-1).to(x.device)
        pred = predict(self.model, x)
        rob = self._robust(x, self.eps, ids)
        score, lo, hi = self._score_bounds(x, self.eps)
        return {"pred": pred, column("robust", self.eps): rob, "score": score,
                column("score_lo", self.eps): lo, column("score_hi", self.eps): hi}

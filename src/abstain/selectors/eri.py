"""Empirical robustness indicator S_ERI (eq. 12 / eq. 17).

S_ERI(x) = 1{∀x' ∈ B_ε(x): F(x') = F(x)}, checked with :func:`abstain.attacks.is_robust`
(APGD aimed at the model's own prediction). Robust selection (eq. 14) under an adversary
of budget ε_a needs S_ERI(x') = 1 for every x' ∈ B_ε_a(x), i.e. robustness of F in
B_{ε+ε_a}(x) (Section 5, triangle inequality; the pixel box [0, 1] only shrinks the
balls), so for ε_a = ε the evaluation attacks the 2ε ball.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from ..attacks import resolve_attack
from ..records import ROBUST, as_records, column
from .base import Decisions, Selector, predict, require


class RobustnessIndicator(Selector):
    """S_ERI for classifier ``model`` at radius ``eps``, empirical: :func:`abstain.attacks.is_robust`
    with ``attack`` (default :data:`abstain.attacks.DEFAULT_ATTACK`; ``"apgd-ce"`` is the
    paper's protocol) and ``steps``."""

    name = "eri"

    def __init__(self, model: torch.nn.Module, *, eps: float, norm: str = "linf", steps: int = 40,
                 seed: int = 0, attack: str | None = None) -> None:
        super().__init__(model, eps=eps, norm=norm, steps=steps, seed=seed,
                         attack=resolve_attack(attack))

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """eq. 12 on clean inputs: F robust in B_ε(x)."""
        return self._robust(x, self.eps, None)

    def robust_select(self, x: torch.Tensor, eps: float | None = None,
                      norm: str | None = None) -> torch.Tensor:
        """eq. 14 for S_ERI: S_ERI(x) = 1 and F robust in B_{ε+eps}(x) (2ε for eps = ε);
        the larger ball is attacked only where S_ERI(x) = 1 (elsewhere robust selection
        fails at x' = x)."""
        return self._nested(x, self.eps + self._adversary(eps, norm))[1]

    def _nested(self, x: torch.Tensor, radius: float,
                ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(F robust in B_ε, F robust in B_radius); the larger ball only where the smaller
        holds, with the same per-sample random starts as :func:`abstain.evaluate`."""
        ids = torch.arange(x.shape[0]) if ids is None else torch.as_tensor(ids).reshape(-1)
        ids = ids.to(x.device)
        r1 = self._robust(x, self.eps, ids)
        r2 = torch.zeros_like(r1)
        idx = torch.nonzero(r1).flatten()
        if idx.numel():
            r2[idx] = self._robust(x[idx], radius, ids[idx])
        return r1, r2

    def records(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Columns ``pred``, ``robust@ε`` (= S_ERI(x)) and ``robust@2ε``.

        ``robust@2ε`` is attacked only where ``robust@ε`` holds: an adversarial example in
        B_ε is one in B_2ε, so elsewhere it is exactly 0.
        """
        pred = predict(self.model, x)
        r1, r2 = self._nested(x, 2 * self.eps, ids)
        return {"pred": pred, column("robust", self.eps): r1, column("robust", 2 * self.eps): r2}

    @classmethod
    def decisions(cls, records: Mapping[str, Any], eps: float, tau: float | None = None) -> Decisions:
        """S_ERI(x) = ``robust@ε``; robust selection = ``robust@2ε`` ∧ ``robust@ε``;
        robust abstention cannot be certified (None)."""
        require(records, column(ROBUST, eps), column(ROBUST, 2 * eps))
        return Decisions(*as_records(records).indicator(eps, ROBUST), None)

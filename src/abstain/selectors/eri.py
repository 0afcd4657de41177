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

from .base import Decisions, Selector, _np_bool, col, predict, require


class RobustnessIndicator(Selector):
    """S_ERI for classifier ``model`` at radius ``eps``, empirical: :func:`abstain.attacks.is_robust`
    with ``attack`` (default :data:`abstain.attacks.DEFAULT_ATTACK`; ``"apgd-ce"`` is the
    paper's protocol) and ``steps``."""

    name = "eri"

    def __init__(self, model: torch.nn.Module, *, eps: float, norm: str = "linf", steps: int = 40,
                 seed: int = 0, ensemble: bool = False, attack: str | None = None) -> None:
        from ..attacks import resolve_attack

        super().__init__(model, eps=eps, norm=norm, steps=steps, seed=seed,
                         attack=resolve_attack(attack, ensemble))
        self.ensemble = self.attack == "ensemble"

    def _is_robust(self, x: torch.Tensor, radius: float,
                   sample_ids: torch.Tensor | None = None) -> torch.Tensor:
        """F robust in B_radius(x); random starts depend on the seed and ``sample_ids`` only,
        so a subset gives the same flags as the full batch."""
        from ..attacks import is_robust

        if radius == 0.0:
            return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        with torch.enable_grad():
            rob = is_robust(self.model, x, eps=radius, norm=self.norm, steps=self.steps,
                            attack=self.attack, generator=self._generator(),
                            sample_ids=sample_ids)
        return rob.to(torch.bool)

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """eq. 12 on clean inputs: F robust in B_ε(x)."""
        return self._is_robust(x, self.eps)

    def robust_select(self, x: torch.Tensor, eps: float | None = None,
                      norm: str | None = None) -> torch.Tensor:
        """eq. 14 for S_ERI: S_ERI(x) = 1 and F robust in B_{ε+eps}(x) (2ε for eps = ε);
        the larger ball is attacked only where S_ERI(x) = 1 (elsewhere robust selection
        fails at x' = x)."""
        return self._nested(x, self.eps + self._adversary(eps, norm))[1]

    def _nested(self, x: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
        r1 = self._is_robust(x, self.eps)
        r2 = torch.zeros_like(r1)
        idx = torch.nonzero(r1).flatten()
        if idx.numel():
            r2[idx] = self._is_robust(x[idx], radius, sample_ids=idx)
        return r1, r2

    def records(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Columns ``pred``, ``robust@ε`` (= S_ERI(x)) and ``robust@2ε``.

        ``robust@2ε`` is attacked only where ``robust@ε`` holds: an adversarial example in
        B_ε is one in B_2ε, so elsewhere it is exactly 0.
        """
        pred = predict(self.model, x)
        r1, r2 = self._nested(x, 2 * self.eps)
        return {"pred": pred, col("robust", self.eps): r1, col("robust", 2 * self.eps): r2}

    @classmethod
    def decisions(cls, records: Mapping[str, Any], eps: float, tau: float | None = None) -> Decisions:
        """S_ERI(x) = ``robust@ε``; robust selection = ``robust@2ε`` ∧ ``robust@ε``;
        robust abstention cannot be certified (None)."""
        r1, r2 = col("robust", eps), col("robust", 2 * eps)
        require(records, r1, r2)
        sel = _np_bool(records[r1])
        return Decisions(sel, sel & _np_bool(records[r2]), None)

"""Certified robustness indicator S_CRI (eq. 13) from randomized smoothing.

S_CRI(x) = 1{∀x' ∈ B_ε(x): G(x') = G(x)} for the smoothed classifier G (Cohen et al.
2019), decided by :meth:`abstain.smoothing.Smooth.certify_batch`: selected iff G does not
abstain and the certified ℓ2 radius R ≥ ε.

Robust selection (eq. 14). The paper's note below eq. 14 counts R ≥ ε. Strictly, S_CRI(x')
= 1 for every x' ∈ B_ε(x) needs G constant on B_ε(x') ⊂ B_2ε(x), which R ≥ 2ε certifies
(triangle inequality); that sound criterion is the default here (``paper_note=False``), and
``paper_note=True`` gives the paper's R ≥ ε. Both are computable from the recorded radius.
The certificate holds with probability ≥ 1 − α per sample (Cohen et al., Theorem 1).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..errors import InputError
from ..records import column
from .base import Decisions, Selector, _np_float, require


class CertifiedRobustnessIndicator(Selector):
    """S_CRI for base classifier ``model`` smoothed with noise level ``sigma`` (ℓ2 only)."""

    name = "cri"

    def __init__(self, model: nn.Module, *, num_classes: int, sigma: float, eps: float,
                 norm: str = "l2", n0: int = 100, n: int = 1000, alpha: float = 0.001,
                 batch_size: int = 1000, seed: int = 0, paper_note: bool = False) -> None:
        if norm != "l2":
            raise InputError(f"S_CRI certifies l2 balls (randomized smoothing); got norm {norm!r}")
        super().__init__(model, eps=eps, norm=norm, steps=0, seed=seed)
        from ..smoothing import Smooth  # noqa: PLC0415  heavy: scipy, S_CRI only

        self.smooth = Smooth(model, num_classes, sigma)
        self.n0, self.n, self.alpha, self.batch_size = int(n0), int(n), float(alpha), int(batch_size)
        self.paper_note = bool(paper_note)
        self._cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def certify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class of G or −1 for abstain, certified radius) per sample; cached per input."""
        if self._cache is not None and self._cache[0].shape == x.shape and torch.equal(self._cache[0], x):
            return self._cache[1], self._cache[2]
        cls, rad = self.smooth.certify_batch(x, self.n0, self.n, self.alpha, self.batch_size,
                                             generator=self._generator("cri"))
        self._cache = (x.detach().clone(), cls, rad)
        return cls, rad

    def select(self, x: torch.Tensor) -> torch.Tensor:
        cls, rad = self.certify(x)
        return (cls >= 0) & (rad >= self.eps)

    def robust_select(self, x: torch.Tensor, eps: float | None = None,
                      norm: str | None = None) -> torch.Tensor:
        eps_a = self._adversary(eps, norm)
        cls, rad = self.certify(x)
        need = max(self.eps, eps_a) if self.paper_note else self.eps + eps_a
        return (cls >= 0) & (rad >= need) & (rad >= self.eps)

    def records(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Columns ``pred`` (G's class, −1 = abstain) and ``radius`` (0 when abstaining)."""
        cls, rad = self.certify(x)
        return {"pred": cls, "radius": torch.where(cls >= 0, rad, torch.zeros_like(rad)),
                column("robust", self.eps): (cls >= 0) & (rad >= self.eps)}

    @classmethod
    def decisions(cls, records: Mapping[str, Any], eps: float, tau: float | None = None,
                  paper_note: bool = False) -> Decisions:
        require(records, "pred", "radius")
        pred, rad = _np_float(records["pred"]), _np_float(records["radius"])
        ok = pred >= 0
        need = eps if paper_note else 2 * eps
        return Decisions(ok & (rad >= eps), ok & (rad >= need), None)

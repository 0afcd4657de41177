"""The shared interface of selectors S: X -> {0, 1} of abstain models (F, S) (Section 5).

Every selector is built for a classifier F and a threat model (ε, norm) and offers

``select(x)``
    S(x) on the clean inputs (BoolTensor[N]).
``robust_select(x, eps=None, norm=None)``
    robust selection, eq. 14: ``∀x' ∈ B_ε(x): S(x') = 1`` for an adversary of budget ``eps``
    (default: the selector's own ε), checked empirically (attacks) or certified (IBP,
    randomized smoothing), whichever the selector supports.
``records(x, ids=None)``
    the per-sample record columns from which :func:`decisions` recomputes the selection
    without touching the model (every reported number comes from these records). Column
    names end in ``@<ε>`` (``f"{eps:g}"``) where they depend on the radius. ``ids`` are the
    samples' dataset indices: every attack draws a sample's random start from the seed and
    its index (:mod:`abstain.seeds`), so the records of a sample do not depend on the batch
    or chunk it was evaluated in, and ``robust@ε`` equals that of :func:`abstain.evaluate`.

Threshold selectors (softmax response, selection network) record *scores* so one
evaluation serves every threshold τ: the clean score ``score``, a lower bound (certified)
or the smallest value found (attacked) over the robust-selection ball ``score_lo@ε``, and
where certifiable an upper bound ``score_hi@ε`` (robust abstention, used by compositions).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from torch import nn

from ..attacks import is_robust, resolve_attack
from ..errors import InputError
from ..metrics import abstain_metrics
from ..records import ROBUST, as_records, column
from ..seeds import generator
from ..utils import eval_mode, to_numpy
from ..validate import check_eps, check_norm


@dataclass
class Decisions:
    """Per-sample selector decisions of one abstain model under one threat model.

    ``robust_abstained`` is None when the selector cannot certify abstention.
    """

    selected: np.ndarray
    robust_selected: np.ndarray
    robust_abstained: np.ndarray | None = None


def _np_bool(a: Any) -> np.ndarray:
    return to_numpy(a, bool)


def _np_float(a: Any) -> np.ndarray:
    return to_numpy(a, np.float64)


def require(records: Mapping[str, Any], *names: str) -> None:
    missing = [n for n in names if n not in records]
    if missing:
        raise InputError(f"records lack column(s) {', '.join(missing)}; have {', '.join(records)}")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """F(x) = argmax f(x) in eval mode, batched (restores the model's mode)."""
    with eval_mode(model):
        return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])


class Selector(ABC):
    """S for classifier ``model`` under the threat model ``B^norm_eps`` (see module doc)."""

    name: ClassVar[str] = "selector"

    def __init__(self, model: nn.Module, *, eps: float, norm: str = "linf", steps: int = 40,
                 seed: int = 0, attack: str | None = None) -> None:
        self.model = model
        self.eps = check_eps(eps)
        self.norm = check_norm(norm)
        self.steps = int(steps)
        self.seed = int(seed)
        # how F's robustness is checked (abstain.attacks.is_robust): the default attack, or
        # "apgd-ce" for the paper's protocol
        self.attack = resolve_attack(attack)

    def _generator(self, *tags: int | str) -> torch.Generator:
        """A fresh generator of the stream ``tags`` (:func:`abstain.seeds.generator`), so
        repeated calls give the same answer. No tag: the root stream, which every check of
        F's robustness uses (as :func:`abstain.evaluate` does)."""
        return generator(self.seed, *tags)

    def _robust(self, x: torch.Tensor, radius: float, ids: torch.Tensor | None) -> torch.Tensor:
        """F robust in B_radius(x) (:func:`abstain.attacks.is_robust` with the selector's
        attack and steps), each random start drawn from the seed and the sample's id."""
        if radius == 0.0:
            return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        with torch.enable_grad():
            rob = is_robust(self.model, x, eps=radius, norm=self.norm, steps=self.steps,
                            attack=self.attack, generator=self._generator(), sample_ids=ids)
        return rob.to(torch.bool)

    def _adversary(self, eps: float | None, norm: str | None) -> float:
        eps = self.eps if eps is None else check_eps(eps)
        if norm is not None and check_norm(norm) != self.norm:
            raise InputError(f"{self.name}: the selector is defined for norm {self.norm!r}; "
                             f"robust selection under {norm!r} is not supported")
        return eps

    @abstractmethod
    def select(self, x: torch.Tensor) -> torch.Tensor:
        """S(x) on clean inputs, BoolTensor[N]."""

    @abstractmethod
    def robust_select(self, x: torch.Tensor, eps: float | None = None,
                      norm: str | None = None) -> torch.Tensor:
        """eq. 14: ∀x' ∈ B_eps(x): S(x') = 1 (BoolTensor[N])."""

    @abstractmethod
    def records(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-sample record columns at the selector's ε (see :meth:`decisions`); ``ids``:
        the samples' dataset indices (default ``0..N-1``)."""

    @classmethod
    @abstractmethod
    def decisions(cls, records: Mapping[str, Any], eps: float, tau: float | None = None) -> Decisions:
        """Selection, robust selection (and robust abstention) recomputed from records."""

    @classmethod
    def robust_pred(cls, records: Mapping[str, Any], eps: float) -> np.ndarray:
        """∀x' ∈ B_ε(x): F(x') = F(x), from the records (``robust@ε``)."""
        require(records, column(ROBUST, eps))
        return as_records(records).flag(ROBUST, eps)

    @classmethod
    def metrics(cls, records: Mapping[str, Any], y: Any, eps: float, tau: float | None = None,
                decisions: Decisions | None = None) -> dict[str, float]:
        """:func:`abstain.metrics.abstain_metrics` of (F, S) from the records: coverage,
        R_rob^sel (eq. 14) and R_rob^acc of the robustly selected samples."""
        require(records, "pred")
        d = decisions if decisions is not None else cls.decisions(records, eps, tau)
        return abstain_metrics(y, records["pred"], d.selected, d.robust_selected,
                               cls.robust_pred(records, eps))


class ThresholdSelector(Selector):
    """S(x) = 1{score(x) ≥ τ} (softmax response eq. 16, selection network eq. 18)."""

    def __init__(self, model: nn.Module, *, tau: float, eps: float, norm: str = "linf",
                 steps: int = 40, seed: int = 0, attack: str | None = None) -> None:
        super().__init__(model, eps=eps, norm=norm, steps=steps, seed=seed, attack=attack)
        tau = float(tau)
        if not 0.0 <= tau <= 1.0:
            raise InputError(f"threshold tau must lie in [0, 1], got {tau}")
        self.tau = tau

    @classmethod
    def decisions(cls, records: Mapping[str, Any], eps: float, tau: float | None = None) -> Decisions:
        if tau is None:
            raise InputError(f"{cls.name}: decisions need a threshold tau")
        lo_key, hi_key = column("score_lo", eps), column("score_hi", eps)
        # an ε-dependent clean-side score (S_SR over B_ε) is named score@ε; S_SN's is "score"
        score_key = column("score", eps) if column("score", eps) in records else "score"
        require(records, score_key, lo_key)
        score, lo = _np_float(records[score_key]), _np_float(records[lo_key])
        hi = _np_float(records[hi_key]) if hi_key in records else None
        return Decisions(score >= tau, (lo >= tau) & (score >= tau),
                         None if hi is None else (hi < tau) & (score < tau))

    @staticmethod
    def tau_grid(records: Mapping[str, Any], eps: float, points: int = 101) -> np.ndarray:
        """Thresholds τ ∈ [0, 1) for a Pareto sweep: a uniform grid plus the distinct
        recorded scores (so every attainable operating point appears)."""
        vals = [np.linspace(0.0, 1.0, points, endpoint=False)]
        for key in ("score", column("score", eps), column("score_lo", eps)):
            if key in records:
                vals.append(_np_float(records[key]))
        grid = np.unique(np.concatenate(vals))
        return grid[(grid >= 0.0) & (grid < 1.0)]


__all__ = ["Selector", "ThresholdSelector", "Decisions", "require", "predict"]

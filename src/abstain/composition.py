"""2-compositional models (Section 6, eq. 15) and cascades (beyond the paper, Section 8).

H(x) = S(x)·F_robust(x) + (1 − S(x))·F_core(x)  (eq. 15)

:class:`Composition` is the inference module: its ``forward`` returns, per sample, the
logits of the model the selector chose (so ``argmax`` is H(x)). :class:`Cascade`
generalises it to an ordered list of abstain models (F_i, S_i) ending in a core model:
the first stage whose selector selects x answers.

Metrics never need the modules: natural accuracy and the *sound* robust accuracy of a
composition or cascade are computed from per-sample records by
:func:`abstain.metrics.cascade_outcome` (a sample counts as robust only if neither a
selector's decision nor the chosen model's prediction can change in the ball).

:func:`choose_cascade` picks, under a budget of natural-accuracy loss w.r.t. the core, the
ordered stages (among the candidates on the Pareto front of their 2-compositions) that
maximise the robust accuracy. Choosing on the test set would be model selection on the
test set, so :func:`crossfit_cascade` chooses on one half of the samples and applies the
choice to the other half (2-fold cross-fitting): every sample's outcome comes from a
cascade chosen without it.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .errors import InputError
from .metrics import cascade_metrics, cascade_outcome, paper_robust_accurate
from .selectors.base import Decisions, Selector
from .utils import eval_mode, to_numpy as _np


class Cascade(nn.Module):
    """Inference module of a cascade ((F_1, S_1), …, (F_m, S_m), F_core).

    ``forward(x)`` returns the logits of the first F_i whose S_i(x) = 1, else of F_core
    (all models must have the same number of classes). Selectors run their own checks
    (attacks for S_ERI/S_SR, IBP for S_SN), so forward is not differentiable w.r.t. the
    choice; it is meant for inference.
    """

    def __init__(self, stages: Sequence[tuple[nn.Module, Selector]], core: nn.Module) -> None:
        super().__init__()
        if not stages:
            raise InputError("a cascade needs at least one (model, selector) stage")
        self.models = nn.ModuleList([m for m, _ in stages])
        self.selectors = [s for _, s in stages]
        self.core = core

    @torch.no_grad()
    def _logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with eval_mode(model):
            return model(x)

    def choices(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the answering stage per sample (len(stages) = the core)."""
        m = len(self.selectors)
        choice = torch.full((x.shape[0],), m, dtype=torch.long, device=x.device)
        for i in reversed(range(m)):  # earlier stages win
            choice = torch.where(self.selectors[i].select(x).to(x.device), torch.full_like(choice, i), choice)
        return choice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        choice = self.choices(x)
        out = self._logits(self.core, x)
        for i in reversed(range(len(self.selectors))):
            logits = self._logits(self.models[i], x)
            out = torch.where((choice == i).unsqueeze(1), logits, out)
        return out

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).argmax(dim=1)


class Composition(Cascade):
    """The 2-compositional model H = S·F_robust + (1 − S)·F_core (eq. 15)."""

    def __init__(self, robust: nn.Module, core: nn.Module, selector: Selector) -> None:
        super().__init__([(robust, selector)], core)

    @property
    def robust(self) -> nn.Module:
        return self.models[0]

    @property
    def selector(self) -> Selector:
        return self.selectors[0]


@dataclass
class Candidate:
    """One abstain model's per-sample records, usable as a cascade stage."""

    name: str
    pred: np.ndarray
    robust: np.ndarray
    decisions: Decisions
    info: dict[str, Any] = field(default_factory=dict)

    def stage(self, idx: np.ndarray | None = None) -> dict[str, Any]:
        d = self.decisions
        take = (lambda a: a) if idx is None else (lambda a: a[idx])
        return {"pred": take(self.pred), "robust": take(self.robust), "selected": take(d.selected),
                "robust_selected": take(d.robust_selected),
                "robust_abstained": None if d.robust_abstained is None else take(d.robust_abstained)}


def composition_columns(y: Any, candidate: Candidate, core_pred: Any, core_robust: Any) -> dict[str, np.ndarray]:
    """Per-sample records of the 2-composition of ``candidate`` with the core:
    ``h_pred``, ``h_robust_acc`` (sound, :func:`abstain.metrics.cascade_outcome`),
    ``h_robust_acc_paper`` (the authors' metric, :func:`abstain.metrics.paper_robust_accurate`,
    for comparison), ``selected``, ``robust_selected``."""
    h, ok = cascade_outcome(y, [candidate.stage()], core_pred, core_robust)
    paper = paper_robust_accurate(y, [candidate.stage()], core_pred, core_robust)
    return {"h_pred": h, "h_robust_acc": ok, "h_robust_acc_paper": paper,
            "selected": candidate.decisions.selected, "robust_selected": candidate.decisions.robust_selected}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated (both coordinates ≥, one >) by another."""
    keep = []
    for i, (a, b) in enumerate(points):
        dominated = any((c >= a and d >= b) and (c > a or d > b) for j, (c, d) in enumerate(points) if j != i)
        if not dominated:
            keep.append(i)
    return keep


def choose_cascade(y: Any, candidates: Sequence[Candidate], core_pred: Any, core_robust: Any, *,
                   budget: float, max_len: int = 3, idx: np.ndarray | None = None) -> tuple[list[str], dict[str, float]]:
    """The ordered stages maximising robust accuracy with natural accuracy ≥ core − budget.

    Candidates are first reduced to the Pareto front of their 2-compositions (natural vs
    robust accuracy); every ordered sequence of up to ``max_len`` of them is evaluated
    from the records (restricted to ``idx`` when given), next to the core alone. Ties:
    higher natural accuracy, then fewer stages. Returns ``([], core metrics)`` when no
    cascade fits the budget or none beats the core.
    """
    if budget < 0:
        raise InputError(f"the natural-accuracy budget must be >= 0, got {budget}")
    y = _np(y, np.int64)
    pc, rc = _np(core_pred, np.int64), _np(core_robust, bool)
    if idx is not None:
        y, pc, rc = y[idx], pc[idx], rc[idx]
    core_nat = float((pc == y).mean())
    base = {"nat_acc": core_nat, "rob_acc": float(((pc == y) & rc).mean()), "coverage": 0.0}
    two = [cascade_metrics(y, [c.stage(idx)], pc, rc) for c in candidates]
    front = [candidates[i] for i in pareto_front([(m["nat_acc"], m["rob_acc"]) for m in two])]
    # the empty cascade (the core alone) is always within budget
    best: tuple[tuple[float, float, int], list[str], dict[str, float]] = (
        (base["rob_acc"], base["nat_acc"], 0), [], base)
    for k in range(1, max_len + 1):
        for seq in itertools.permutations(front, k):
            m = cascade_metrics(y, [c.stage(idx) for c in seq], pc, rc)
            if m["nat_acc"] < core_nat - budget - 1e-12:
                continue
            key = (m["rob_acc"], m["nat_acc"], -k)
            if key > best[0]:
                best = (key, [c.name for c in seq], m)
    return best[1], best[2]


def crossfit_cascade(y: Any, candidates: Sequence[Candidate], core_pred: Any, core_robust: Any, *,
                     budget: float, max_len: int = 3, seed: int = 0) -> dict[str, Any]:
    """2-fold cross-fitted cascade: choose on one half (:func:`choose_cascade`), apply to the
    other, and vice versa. Returns per-sample ``h_pred``/``h_robust_acc``/``fold`` (and the
    authors' metric ``h_robust_acc_paper``) and the stages chosen per fold (``chosen``)."""
    y = _np(y, np.int64)
    n = y.shape[0]
    if n < 2:
        raise InputError("cross-fitting needs at least two samples")
    perm = np.random.default_rng(seed).permutation(n)
    folds = [np.sort(perm[: n // 2]), np.sort(perm[n // 2:])]
    h = _np(core_pred, np.int64).copy()
    ok = np.zeros(n, bool)
    paper = np.zeros(n, bool)
    fold_of = np.zeros(n, np.int64)
    by_name = {c.name: c for c in candidates}
    chosen: list[list[str]] = []
    for f, (pick, apply) in enumerate([(folds[0], folds[1]), (folds[1], folds[0])]):
        names, _ = choose_cascade(y, candidates, core_pred, core_robust, budget=budget,
                                  max_len=max_len, idx=pick)
        chosen.append(names)
        stages = [by_name[nm].stage(apply) for nm in names]
        hp, good = cascade_outcome(y[apply], stages, _np(core_pred, np.int64)[apply],
                                   _np(core_robust, bool)[apply])
        h[apply], ok[apply], fold_of[apply] = hp, good, 1 - f
        paper[apply] = paper_robust_accurate(y[apply], stages, _np(core_pred, np.int64)[apply],
                                             _np(core_robust, bool)[apply])
    return {"h_pred": h, "h_robust_acc": ok, "h_robust_acc_paper": paper, "fold": fold_of,
            "chosen": chosen}


__all__ = ["Composition", "Cascade", "Candidate", "composition_columns", "pareto_front",
           "choose_cascade", "crossfit_cascade"]

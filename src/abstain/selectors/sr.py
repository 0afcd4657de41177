"""Softmax response S_SR (Geifman & El-Yaniv 2017; paper eq. 16, Appendix A.4).

S_SR(x) = 1{∀x' ∈ B_ε(x): max_c softmax(f(x'))_c ≥ τ} (eq. 16). As for S_ERI, robust
selection (eq. 14) then needs the confidence over the doubled ball B_2ε(x) (Section 7.2).
With ``ball=False`` the selector is plain SR on the clean input, 1{max_c softmax(f(x))_c ≥ τ},
and robust selection looks at B_ε(x).

Confidence is minimised by attacks; one attack run serves every τ because the records hold
the smallest max-softmax found per sample (a τ sweep over [0, 1), Fig. 3 and Fig. 6):

``apgd``  APGD maximising the callable objective −max_c softmax(f(x'))_c (minimises the
          confidence directly);
``conf``  APGDconf (eq. 21): APGD maximising the best other class's probability
          max_{c≠F(x)} softmax(f(x'))_c, which finds *high-confidence* adversarial examples:
          points the selector keeps (confidence ≥ τ) where the prediction changed.

Both are run without early stopping, so each returns its best point after all steps. The
found value is an upper bound on the true minimum: the robust selection measured is an
empirical (optimistic) estimate, as in the paper.

Two rules (``rule``; docs/fidelity.md):

``"paper"`` (default)  eq. 16 and Section 7.2 as written: select when the confidence over
          B_ε(x) stays ≥ τ (``ball=True``; plain SR with ``ball=False``), robust selection
          when it stays ≥ τ over B_2ε(x) (B_ε(x) for plain SR), the minimum over the attacks.
``"authors"``  what the authors' code computes (ymerkli/robust-abstain
          ``abstain/confidence_threshold.py`` with ``eval/adv.py``): select when the CLEAN
          max-softmax is ≥ τ; robust selection ("adv_is_confident") when the max-softmax at
          the APGDconf point in B_ε(x) is ≥ τ, where that point is the attack's adversarial
          example if it changed the prediction and x itself otherwise (their APGD returns x
          where it fails). Not AND-ed with the clean selection, and no doubled ball: it is
          the selector's decision under the APGDconf attack, which is how their composition
          (``eval/comp.py``) uses it. Needs the ``conf`` attack's records at ε.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..attacks import apgd
from ..errors import InputError
from ..utils import eval_mode
from ..records import column
from .base import Decisions, ThresholdSelector, _np_bool, _np_float, require

ATTACKS = ("apgd", "conf")
RULES = ("paper", "authors")


def neg_max_softmax(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Objective to MAXIMISE for confidence minimisation: −max_c softmax(z)_c (``y`` unused)."""
    return -logits.softmax(dim=1).amax(dim=1)


def _check_rule(rule: str, attacks: Sequence[str]) -> str:
    if rule not in RULES:
        raise InputError(f"unknown SR rule {rule!r}; known: {', '.join(RULES)}")
    if rule == "authors" and "conf" not in attacks:
        raise InputError("the authors' SR rule reads the APGDconf point: attacks must include 'conf'")
    return rule


class SoftmaxResponse(ThresholdSelector):
    """S_SR for classifier ``model`` with threshold ``tau`` at radius ``eps``."""

    name = "sr"

    def __init__(self, model: nn.Module, *, tau: float = 0.5, eps: float, norm: str = "linf",
                 steps: int = 40, seed: int = 0, attacks: Sequence[str] = ATTACKS,
                 ball: bool = True, rule: str = "paper", attack: str | None = None) -> None:
        super().__init__(model, tau=tau, eps=eps, norm=norm, steps=steps, seed=seed, attack=attack)
        bad = [a for a in attacks if a not in ATTACKS]
        if bad or not attacks:
            raise InputError(f"unknown SR attack(s) {bad or attacks}; known: {', '.join(ATTACKS)}")
        self.attacks = tuple(attacks)
        self.ball = bool(ball)
        self.rule = _check_rule(rule, self.attacks)

    # -- attacks -------------------------------------------------------------------------
    @torch.no_grad()
    def _conf_pred(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with eval_mode(self.model):
            p = self.model(x).softmax(dim=1)
        c, k = p.max(dim=1)
        return c, k

    def attack_points(self, x: torch.Tensor, pred: torch.Tensor, radius: float,
                      attack: str, ids: torch.Tensor | None = None) -> torch.Tensor:
        """The point in B_radius(x) ∩ [0, 1] found by ``attack`` (see module doc); random
        starts from the stream ``sr-<attack>`` and the samples' ``ids``."""
        loss = neg_max_softmax if attack == "apgd" else "conf"
        with torch.enable_grad():
            return apgd(self.model, x, pred, eps=radius, norm=self.norm, steps=self.steps, loss=loss,
                        generator=self._generator(f"sr-{attack}"), early_stop=False, sample_ids=ids)

    def _min_conf(self, x: torch.Tensor, radius: float) -> torch.Tensor:
        conf, pred = self._conf_pred(x)
        if radius == 0.0:
            return conf
        out = conf
        for a in self.attacks:
            out = torch.minimum(out, self._conf_pred(self.attack_points(x, pred, radius, a))[0])
        return out

    # -- interface -----------------------------------------------------------------------
    def _radii(self, eps_a: float) -> tuple[float, float]:
        """(selection radius, robust-selection radius) for an adversary of budget eps_a."""
        r_sel = self.eps if self.ball else 0.0
        return r_sel, r_sel + eps_a

    def _authors_adv_conf(self, x: torch.Tensor, radius: float) -> torch.Tensor:
        """The authors' ``adv_conf``: max-softmax at the APGDconf point if it changed the
        prediction, else at x (see module doc)."""
        conf, pred = self._conf_pred(x)
        if radius == 0.0:
            return conf
        c_adv, k_adv = self._conf_pred(self.attack_points(x, pred, radius, "conf"))
        return torch.where(k_adv != pred, c_adv, conf)

    def select(self, x: torch.Tensor) -> torch.Tensor:
        if self.rule == "authors":
            return self._conf_pred(x)[0] >= self.tau
        return self._min_conf(x, self._radii(self.eps)[0]) >= self.tau

    def robust_select(self, x: torch.Tensor, eps: float | None = None,
                      norm: str | None = None) -> torch.Tensor:
        if self.rule == "authors":
            return self._authors_adv_conf(x, self._adversary(eps, norm)) >= self.tau
        r_sel, r_rob = self._radii(self._adversary(eps, norm))
        return (self._min_conf(x, r_rob) >= self.tau) & (self._min_conf(x, r_sel) >= self.tau)

    def records(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Columns: ``pred``, ``conf`` (clean max-softmax), ``robust@ε`` (is_robust of F);
        per attack a and radius r (ε, and 2ε when ``ball``): ``minconf_<a>@r`` (smallest
        max-softmax among x and the attack's point), ``flip_<a>@r`` (the point changes
        F's prediction) and ``flipconf_<a>@r`` (its max-softmax when flipped, else 0);
        and the combined ``score@ε``/``score_lo@ε`` (min over the attacks) of
        :meth:`ThresholdSelector.decisions` (the paper's rule). The columns do not depend
        on ``rule``: the authors' decisions are recomputed from the same records by
        :meth:`decisions_for` with ``rule="authors"`` (it reads ``conf``, ``flip_conf@ε``
        and ``flipconf_conf@ε``)."""
        ids = None if ids is None else torch.as_tensor(ids).reshape(-1).to(x.device)
        conf, pred = self._conf_pred(x)
        rob = self._robust(x, self.eps, ids)
        out: dict[str, torch.Tensor] = {"pred": pred, "conf": conf, column("robust", self.eps): rob}
        radii = sorted({r for r in self._radii(self.eps) if r > 0})
        for r in radii:
            for a in self.attacks:
                c_adv, k_adv = self._conf_pred(self.attack_points(x, pred, r, a, ids))
                flip = k_adv != pred
                out[column(f"minconf_{a}", r)] = torch.minimum(conf, c_adv)
                out[column(f"flip_{a}", r)] = flip
                out[column(f"flipconf_{a}", r)] = torch.where(flip, c_adv, torch.zeros_like(c_adv))
        dec = self.scores_from(out, self.eps, self.attacks, self.ball)
        out[column("score", self.eps)] = torch.as_tensor(dec[0], dtype=conf.dtype, device=conf.device)
        out[column("score_lo", self.eps)] = torch.as_tensor(dec[1], dtype=conf.dtype, device=conf.device)
        return out

    # -- from records ----------------------------------------------------------------------
    @staticmethod
    def scores_from(records: Mapping[str, Any], eps: float, attacks: Sequence[str] = ATTACKS,
                    ball: bool = True, rule: str = "paper") -> tuple[np.ndarray, np.ndarray]:
        """(selection score, robust-selection score) from records, using only ``attacks``.
        ``rule="authors"``: (clean max-softmax, max-softmax at the ``conf`` attack's point
        at ε if it flipped F, else the clean one); ``attacks`` and ``ball`` are not used."""
        if _check_rule(rule, attacks) == "authors":
            f, c = column("flip_conf", eps), column("flipconf_conf", eps)
            require(records, "conf", f, c)
            conf = _np_float(records["conf"])
            return conf, np.where(_np_bool(records[f]), _np_float(records[c]), conf)

        def min_over(r: float) -> np.ndarray:
            keys = [column(f"minconf_{a}", r) for a in attacks]
            require(records, *keys)
            return np.minimum.reduce([_np_float(records[k]) for k in keys])

        require(records, "conf")
        score = min_over(eps) if ball else _np_float(records["conf"])
        return score, min_over(2 * eps if ball else eps)

    @classmethod
    def decisions_for(cls, records: Mapping[str, Any], eps: float, tau: float,
                      attacks: Sequence[str] = ATTACKS, ball: bool = True,
                      rule: str = "paper") -> Decisions:
        """Selection and robust selection at τ seen by the given attacks only (Fig. 6);
        ``rule="authors"``: the authors' rule (module doc), robust selection not AND-ed
        with the clean selection."""
        score, lo = cls.scores_from(records, eps, attacks, ball, rule)
        if rule == "authors":
            return Decisions(score >= tau, lo >= tau, None)
        return Decisions(score >= tau, (lo >= tau) & (score >= tau), None)

    @classmethod
    def robust_pred(cls, records: Mapping[str, Any], eps: float, attacks: Sequence[str] = ATTACKS) -> np.ndarray:
        """F robust in B_ε: ``robust@ε`` and no attack point in B_ε changed the prediction."""
        require(records, column("robust", eps))
        rob = _np_bool(records[column("robust", eps)])
        for a in attacks:
            key = column(f"flip_{a}", eps)
            if key in records:
                rob = rob & ~_np_bool(records[key])
        return rob

    @staticmethod
    def wrongly_selected(records: Mapping[str, Any], eps: float, tau: float, attack: str) -> np.ndarray:
        """Samples where ``attack`` found x' ∈ B_ε(x) with F(x') ≠ F(x) that S_SR keeps
        (max-softmax(x') ≥ τ): high-confidence adversarial examples (Appendix A.4)."""
        f, c = column(f"flip_{attack}", eps), column(f"flipconf_{attack}", eps)
        require(records, f, c)
        return _np_bool(records[f]) & (_np_float(records[c]) >= tau)

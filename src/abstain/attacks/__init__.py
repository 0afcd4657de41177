"""Adversarial attacks in pixel space: PGD and APGD (ℓ∞, ℓ2), their objectives, and the
empirical robustness of a prediction (paper eq. 2/3).

One step loop (:mod:`abstain.attacks.core`) serves :func:`pgd`, :func:`apgd` and every
objective of :mod:`abstain.attacks.objectives`; :func:`is_robust` is built on them:
``attack="strong"`` (:data:`DEFAULT_ATTACK`, :mod:`abstain.attacks.strong`), ``"apgd-ce"``
(the paper's protocol) or ``"ensemble"``.
"""
from . import objectives
from .apgd import apgd
from .core import AttackResult, frozen_eval, project
from .pgd import pgd
from .robust import ATTACKS, DEFAULT_ATTACK, is_robust, resolve_attack

__all__ = ["pgd", "apgd", "is_robust", "objectives", "project", "frozen_eval", "AttackResult",
           "ATTACKS", "DEFAULT_ATTACK", "resolve_attack"]

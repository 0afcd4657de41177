"""Adversarial attacks in pixel space: PGD and APGD (ℓ∞, ℓ2), their objectives, and the
empirical robustness of a prediction (paper eq. 2/3).

One step loop (:mod:`abstain.attacks.core`) serves :func:`pgd`, :func:`apgd` and every
objective of :mod:`abstain.attacks.objectives`; :func:`is_robust` is built on :func:`apgd`.
"""
from . import objectives
from .apgd import apgd
from .core import AttackResult, frozen_eval, project
from .pgd import pgd
from .robust import is_robust

__all__ = ["pgd", "apgd", "is_robust", "objectives", "project", "frozen_eval", "AttackResult"]

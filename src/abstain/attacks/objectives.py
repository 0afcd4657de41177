"""Attack objectives: per-sample values to MAXIMISE, and the matching success test.

Every objective is a callable ``objective(logits, y) -> Tensor[N]`` computed on the
model's logits at the perturbed input (pixel space, inputs in [0, 1]). The attack core
(:mod:`abstain.attacks.core`) maximises it by projected gradient ascent.

Named objectives (``loss=`` of :func:`~abstain.attacks.pgd` / :func:`~abstain.attacks.apgd`):

``"ce"``           cross-entropy w.r.t. ``y`` (untargeted; success: ``argmax != y``).
``"dlr"``          Difference of Logits Ratio (Croce & Hein, 2020, eq. 6):
                   ``-(z_y - max_{j≠y} z_j) / (z_π1 - z_π3)``; scale invariant. With fewer
                   than three classes ``z_π3`` does not exist and the value falls back to the
                   unscaled margin ``max_{j≠y} z_j - z_y`` (same sign, same argmax).
``"margin"``       the unscaled logit margin ``max_{j≠y} z_j - z_y`` (Carlini & Wagner).
``"ce-targeted"``  ``-CE(logits, y)`` with ``y`` the TARGET classes (success: ``argmax == y``).
``"conf"``         paper eq. 21 (APGDconf, Stutz et al. 2020): ``max_{c≠y} softmax(z)_c`` with
                   ``y`` the prediction at the clean input. No success test: a flip alone is
                   not the goal (a confident flip is), so every sample runs all steps and
                   the most confident point is returned.

:class:`TargetedMargin` (``z_t - z_y`` towards a chosen class ``t``) is the objective the
robustness ensemble uses for its targeted runs: it is linear in the logits, so on affine
models it finds the exact optimum of the ε-ball ∩ box in one step.

A user callable gets no success test unless it has a ``success(logits, y)`` attribute: the
attack then runs all steps for every sample and returns the point of highest objective
value.
"""
from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F

from ..errors import InputError

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Success = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LossSpec = Union[str, Objective]


def _other_max(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``max_{j≠y} z_j`` per row."""
    masked = logits.scatter(1, y.view(-1, 1), float("-inf"))
    return masked.amax(dim=1)


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the label ``y`` (to maximise: move away from ``y``)."""
    return F.cross_entropy(logits, y, reduction="none")


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``max_{j≠y} z_j - z_y``: positive iff the prediction is not ``y``."""
    return _other_max(logits, y) - logits.gather(1, y.view(-1, 1)).squeeze(1)


def dlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020, eq. 6), to maximise.

    ``-(z_y - max_{j≠y} z_j) / (z_π1 - z_π3 + 1e-12)`` with π the logits sorted in
    decreasing order. For two-class models (no π3) this is the unscaled :func:`margin`.
    """
    m = margin(logits, y)
    if logits.shape[1] < 3:
        return m
    top = logits.topk(3, dim=1).values
    return m / (top[:, 0] - top[:, 2] + 1e-12)


def ce_targeted(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-CE(logits, target)``: maximising it moves towards the target class."""
    return -F.cross_entropy(logits, target, reduction="none")


def conf(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Paper eq. 21: the largest softmax probability of any class other than ``y``
    (``y`` = the prediction F(x) at the clean input)."""
    probs = logits.softmax(dim=1)
    return probs.scatter(1, y.view(-1, 1), float("-inf")).amax(dim=1)


class TargetedMargin:
    """``z_t - z_y`` for ``yt[:, 0] = y`` (class to leave), ``yt[:, 1] = t`` (target).

    Linear in the logits. Its ``success`` test (used for early stopping: a callable
    objective may carry one as attribute ``success``) is that the prediction is no
    longer ``y``, whichever class it went to.
    """

    def __call__(self, logits: torch.Tensor, yt: torch.Tensor) -> torch.Tensor:
        return (logits.gather(1, yt[:, 1:2]) - logits.gather(1, yt[:, 0:1])).squeeze(1)

    @staticmethod
    def success(logits: torch.Tensor, yt: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=1) != yt[:, 0]


def untargeted_success(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=1) != y


def targeted_success(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=1) == target


# name -> (objective, success test or None)
OBJECTIVES: dict[str, tuple[Objective, Success | None]] = {
    "ce": (ce, untargeted_success),
    "dlr": (dlr, untargeted_success),
    "margin": (margin, untargeted_success),
    "ce-targeted": (ce_targeted, targeted_success),
    "conf": (conf, None),
}


def resolve(loss: LossSpec) -> tuple[Objective, Success | None, bool]:
    """Map ``loss`` to ``(objective, success, needs_class_labels)``.

    Strings name an entry of :data:`OBJECTIVES`; a callable is used as is, without a
    success test, and its ``y`` may be any tensor with leading dimension N.
    """
    if isinstance(loss, str):
        if loss not in OBJECTIVES:
            raise InputError(f"unknown attack objective {loss!r}; expected one of "
                             f"{', '.join(OBJECTIVES)} or a callable(logits, y) -> Tensor[N]")
        fn, ok = OBJECTIVES[loss]
        return fn, ok, True
    if callable(loss):
        return loss, getattr(loss, "success", None), False
    raise InputError(f"attack objective must be a name or a callable, got {type(loss).__name__}")


__all__ = ["ce", "dlr", "margin", "ce_targeted", "conf", "TargetedMargin", "OBJECTIVES",
           "resolve", "Objective", "Success", "LossSpec"]

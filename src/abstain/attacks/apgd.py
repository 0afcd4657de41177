"""Auto-PGD (Croce & Hein, 2020): the paper's 40-step evaluation attack."""
from __future__ import annotations

import torch
from torch import nn

from .core import AttackResult, Checkpoints, attack
from .objectives import LossSpec

MOMENTUM = 0.75
RHO = 0.75


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
         steps: int = 40, loss: LossSpec = "ce", restarts: int = 1,
         generator: torch.Generator | None = None, early_stop: bool = True,
         sample_ids: torch.Tensor | None = None, return_result: bool = False
         ) -> torch.Tensor | AttackResult:
    """APGD as published (Croce & Hein 2020, Alg. 1), ℓ∞ and ℓ2, in pixel space.

    From a random point of the ε-ball ∩ box, step size ``η⁽⁰⁾ = 2ε``, momentum α = 0.75
    (α = 1 in the first step); at the checkpoints of :class:`~abstain.attacks.core.Checkpoints`
    each sample whose objective stalled has its step size halved and restarts from its best
    point. Objectives as in :mod:`abstain.attacks.objectives` (``"ce"``, ``"dlr"``,
    ``"ce-targeted"``, ``"conf"`` = eq. 21 "APGDconf", or a callable).

    ``restarts`` > 1 re-runs from fresh random starts (on the samples not yet fooled when
    ``early_stop``). With ``early_stop`` (default) a fooled sample is recorded and dropped
    from the batch; the others get their highest-objective point. Deterministic given
    ``generator`` (random starts are a function of the drawn seed and ``sample_ids``,
    default ``0..N-1``). ``return_result`` gives an
    :class:`~abstain.attacks.core.AttackResult` with the success flags and objective values.
    """
    return attack(model, x, y, eps=eps, norm=norm, steps=steps, loss=loss, step_size=None,
                  momentum=MOMENTUM, checkpoints=Checkpoints(steps, RHO), restarts=restarts,
                  random_init=True, generator=generator, early_stop=early_stop, keep_best=True,
                  sample_ids=sample_ids, return_result=return_result)

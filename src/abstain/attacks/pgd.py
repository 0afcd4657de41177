"""Projected gradient descent (Madry et al., 2018): the paper's 10-step training attack."""
from __future__ import annotations

import torch
from torch import nn

from .core import attack
from .objectives import LossSpec

PGD_STEP = 2.5  # default step size 2.5·ε/steps (Madry et al., 2018)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
        steps: int = 10, step_size: float | None = None, loss: LossSpec = "ce",
        random_start: bool = True, generator: torch.Generator | None = None,
        x_init: torch.Tensor | None = None, early_stop: bool = False, keep_best: bool = True,
        restarts: int = 1, sample_ids: torch.Tensor | None = None, check: bool = True) -> torch.Tensor:
    """Maximise ``loss`` over the ε-ball ∩ [0, 1] box by projected gradient ascent.

    ``x``: inputs in [0, 1] (pixel space), any shape (N, ...). ``y``: labels for ``"ce"``,
    ``"dlr"``, ``"margin"``; targets for ``"ce-targeted"``; the clean prediction for
    ``"conf"`` (eq. 21); anything with leading dimension N for a callable
    ``loss(logits, y) -> Tensor[N]`` (e.g. clean softmax for TRADES' KL, eq. of Zhang et al.).

    Step ``x_{k+1} = P(x_k + η·sign ∇)`` (ℓ∞) or ``P(x_k + η·∇/||∇||_2)`` (ℓ2) with
    ``η = step_size`` (default ``2.5·ε/steps``), from a uniform random start in the ball
    (``random_start``) or from ``x_init`` (projected; TRADES starts at x + 0.001·N(0, 1)).
    Returns the point of highest objective among the iterates (``keep_best``; else the
    last iterate, as in Madry et al.); with ``early_stop`` a sample is returned and
    dropped from the batch as soon as the attack succeeds (prediction leaves ``y``, or
    reaches the target for ``"ce-targeted"``). Eval mode, frozen parameters, flags restored.
    ``check=False``: skip the input checks that read values on the host (device syncs on
    CUDA), for internal callers whose inputs were checked before (see
    :func:`abstain.attacks.core.attack`); the default checks.
    """
    return attack(model, x, y, eps=eps, norm=norm, steps=steps, loss=loss, step_size=step_size,
                  default_step=PGD_STEP, momentum=None, checkpoints=None, restarts=restarts,
                  random_init=random_start, x_init=x_init, generator=generator,
                  early_stop=early_stop, keep_best=keep_best, sample_ids=sample_ids, check=check)

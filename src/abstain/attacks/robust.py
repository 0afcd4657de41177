"""Empirical robustness of a prediction (paper eq. 2/3): ``∀x' ∈ B^p_ε(x): F(x') = F(x)``.

The attack is aimed at the model's own prediction at x, not at the label, so the flag is
the robustness of the prediction, independent of correctness (robust-inaccurate samples
are exactly the robust ones with a wrong prediction).

Attacks (``attack=``), defined once in :data:`ATTACKS`; :data:`DEFAULT_ATTACK` is the default
of :func:`is_robust`, :func:`abstain.evaluate` and the attacking selectors:

``"strong"``   (default) :mod:`abstain.attacks.strong`: sound bounds skip provably robust
               points; margin APGD from the best linearised corner, targeted follow-ups.
               ≥ 99 % agreement with exact oracles near the boundary at 1.1-1.9× the
               forward/backward work of APGD-CE on robust points.
``"apgd-ce"``  the paper's protocol (Section 7): ``steps``-step APGD-CE. Use it wherever a
               number is compared with the paper's.
``"ensemble"`` APGD-CE, APGD-DLR, then APGD on the targeted margin towards each of the
               ``targets`` strongest other classes, every stage on the survivors
               (≈ (K + 1)× APGD-CE on robust points).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..validate import check_eps, check_inputs, check_norm
from .apgd import apgd
from .core import draw_seed, frozen_eval, project
from .objectives import TargetedMargin
from .strong import MAX_TARGETS, strong_candidates

ATTACKS = ("strong", "apgd-ce", "ensemble")
DEFAULT_ATTACK = "strong"


def _stage_generator(seed: int, stage: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + 7919 * stage) % (2**63 - 1))


def is_robust(model: nn.Module, x: torch.Tensor, *, eps: float, norm: str = "linf", steps: int = 40,
              generator: torch.Generator | None = None,
              return_adv: bool = False, restarts: int = 1, targets: int | None = None,
              sample_ids: torch.Tensor | None = None, attack: str | None = None,
              diversity: bool = True) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Whether the prediction ``F(x) = argmax f(x)`` survives the attack in ``B^p_ε(x) ∩ [0,1]^d``
    (paper eq. 2/3, robustness of the prediction).

    ``attack`` (default :data:`DEFAULT_ATTACK` = ``"strong"``, see the module doc):
    ``"apgd-ce"`` is ``steps``-step APGD-CE aimed at F(x), the paper's evaluation
    (Section 7); ``"ensemble"``: APGD-CE, then APGD-DLR on the
    survivors, then APGD on the targeted logit margin ``z_t - z_{F(x)}`` towards each of
    the ``targets`` classes with the highest clean logits (default ``min(K-1, 9)``, K =
    number of model outputs) on the survivors; ``"strong"``: :mod:`abstain.attacks.strong`
    with a main run of ``4·steps // 5`` steps, follow-ups of ``steps // 5`` (``steps // 40``
    where the margin is still above half the clean one) and ``targets``
    ranked classes (``restarts`` is not used); ``diversity=False`` leaves out its extra
    starts on thin points (:mod:`abstain.attacks.diversity`, for comparisons only). Points
    the strong attack skips are proven robust by sound bounds.

    Evidence: a sample is flagged non-robust only if its adversarial input, projected onto
    the ball ∩ box again, changes the prediction under a fresh forward pass. With
    ``return_adv`` returns ``(robust, x_adv)``: for non-robust samples ``x_adv`` is that
    verified input; for robust ones the attack's best point. Random starts depend only on
    the seed drawn from ``generator`` and ``sample_ids`` (default ``0..N-1``), so flags do
    not depend on the batch a sample is in.
    """
    eps = check_eps(eps)
    check_norm(norm)
    check_inputs(x)
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be an nn.Module, got {type(model).__name__}")
    if targets is not None and (isinstance(targets, bool) or not isinstance(targets, int) or targets < 0):
        raise InputError(f"targets must be a non-negative integer, got {targets!r}")
    attack = resolve_attack(attack)
    # validated here for every attack: the strong one may prove all points and run none
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise InputError(f"steps must be a non-negative integer, got {steps!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise InputError(f"restarts must be a positive integer, got {restarts!r}")
    n = x.shape[0]
    ids = torch.arange(n, device=x.device) if sample_ids is None else sample_ids.to(x.device)
    x = x.detach()
    with frozen_eval(model), torch.no_grad():
        logits = model(x)
    if logits.dim() != 2 or logits.shape[0] != n:
        raise InputError(f"the model must return logits of shape ({n}, classes), got {tuple(logits.shape)}")
    pred = logits.argmax(dim=1)
    robust = torch.ones(n, dtype=torch.bool, device=x.device)
    x_adv = x.clone()
    if eps == 0.0:
        return (robust, x_adv) if return_adv else robust
    seed = draw_seed(generator)
    if attack == "strong":
        with frozen_eval(model):
            cand, _ = strong_candidates(model, x, pred, logits, eps=eps, norm=norm, steps=steps,
                                        ids=ids, targets=targets, seed=seed, diversity=diversity)
        with frozen_eval(model), torch.no_grad():   # the evidence: a fresh forward pass
            cand = project(cand, x, eps, norm)
            flipped = model(cand).argmax(dim=1) != pred
        robust = ~flipped
        return (robust, cand) if return_adv else robust
    k = logits.shape[1]
    n_targets = min(k - 1, MAX_TARGETS) if targets is None else min(targets, k - 1)
    stages: list[tuple[object, torch.Tensor | None]] = [("ce", None)]
    if attack == "ensemble":
        stages.append(("dlr", None))
        others = logits.scatter(1, pred.view(-1, 1), float("-inf")).topk(n_targets, dim=1).indices \
            if n_targets > 0 else None
        for j in range(n_targets):
            stages.append((TargetedMargin(), others[:, j]))
    for s, (loss, target) in enumerate(stages):
        idx = torch.nonzero(robust).flatten() if s > 0 else None
        if idx is not None and idx.numel() == 0:
            break
        xs = x if idx is None else x[idx]
        ps = pred if idx is None else pred[idx]
        ys = ps if target is None else torch.stack([ps, target if idx is None else target[idx]], dim=1)
        cand = apgd(model, xs, ys, eps=eps, norm=norm, steps=steps, loss=loss, restarts=restarts,
                    generator=_stage_generator(seed, s), early_stop=True,
                    sample_ids=ids if idx is None else ids[idx])
        with frozen_eval(model), torch.no_grad():   # the evidence: a fresh forward pass
            cand = project(cand, xs, eps, norm)
            flipped = model(cand).argmax(dim=1) != ps
        if idx is None:
            robust = ~flipped
            x_adv = cand
        else:
            robust[idx] = ~flipped
            x_adv[idx] = torch.where(flipped.view((-1,) + (1,) * (x.dim() - 1)), cand, x_adv[idx])
    return (robust, x_adv) if return_adv else robust


def resolve_attack(attack: str | None) -> str:
    """The attack name for ``attack`` (one of :data:`ATTACKS`); ``None`` means
    :data:`DEFAULT_ATTACK`. Raises :class:`InputError` on unknown names."""
    if attack is None:
        return DEFAULT_ATTACK
    if not isinstance(attack, str) or attack not in ATTACKS:
        raise InputError(f"unknown attack {attack!r}; expected one of {', '.join(ATTACKS)}")
    return attack

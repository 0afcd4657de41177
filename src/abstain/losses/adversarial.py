"""Adversarial training losses: PGD-AT (eq. 6), TRADES (eq. 7), ERA (eq. 5, 8), DGA (eq. 20).

All inputs are in pixel space [0, 1]; ε-balls are taken there (normalisation lives inside
the model). Every inner maximisation/minimisation calls the one attack core
:func:`abstain.attacks.pgd` with a callable objective (per-sample values to MAXIMISE),
``early_stop=False`` and the model in eval mode (the core switches modes and restores
them). Inner attacks run in fp32 even when the caller trains under autocast.

Parameters (``params`` mapping; the ``[loss]`` section of a config):

``eps``        radius of the ε-ball (required), ``norm`` ``"linf"``/``"l2"``;
``steps``      inner PGD steps (default 10, Appendix A.2); ``step_size`` (default 2.5·ε/steps);
``gamma``      γ of eq. 7: the weight of the KL term inside TRADES (the paper's β_TRADES,
               default 6.0, Appendix A.2);
``beta``       β of eq. 5/20: the weight of the whole TRADES term in ERA and DGA (default 1.0);
``variant``    ``"paper"`` (default: eq. 5/20 as printed) or ``"authors"`` (what the authors'
               code computes; :mod:`abstain.losses.variants`, docs/fidelity.md) for ERA/DGA;
``era_inner``  ``"targeted"`` (the paper's two attacks; default of ``variant = "paper"``) or
               ``"untargeted-shared"`` (one attack, the default and only choice of
               ``variant = "authors"``); see :func:`era_loss`;
``generator``  optional ``torch.Generator`` for the attacks' random starts (the trainer
               passes a seeded one so training is reproducible);
``seed_generator`` optional CPU ``torch.Generator`` that the attack core draws its start
               seeds from instead (default ``generator``): the trainer passes one on CUDA,
               where a seed drawn from a CUDA generator is a device sync per attack.

Each loss returns ``(loss, parts)``; ``parts`` maps each term's name to a detached 0-dim
tensor (the trainer converts to floats once per epoch to avoid a host sync per step).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import attacks  # attacks.pgd is looked up at call time (tests spy on it)
from ..errors import ConfigError
from ..utils import eval_mode
from ..validate import check_eps, check_norm
from .variants import variant_param

ERA_INNER = ("targeted", "untargeted-shared")
DEFAULT_STEPS = 10
DEFAULT_GAMMA = 6.0      # β_TRADES of Appendix A.2
DEFAULT_BETA = 1.0
TRADES_INIT_STD = 0.001  # TRADES reference: x_adv = x + 0.001·N(0, I)


# --------------------------------------------------------------------------- settings
def _settings(params: Mapping[str, Any]) -> dict[str, Any]:
    if "eps" not in params or params["eps"] is None:
        raise ConfigError("adversarial losses need [loss] eps (the radius of the ε-ball)")
    eps = check_eps(params["eps"])
    norm = check_norm(params.get("norm", "linf") or "linf")
    steps = int(params.get("steps") or DEFAULT_STEPS)
    if steps <= 0:
        raise ConfigError(f"[loss] steps must be positive, got {steps}")
    step_size = params.get("step_size")
    step_size = 2.5 * eps / steps if step_size is None else float(step_size)
    return {"eps": eps, "norm": norm, "steps": steps, "step_size": step_size,
            "generator": params.get("generator"),
            "seed_generator": params.get("seed_generator") or params.get("generator")}


def _weight(params: Mapping[str, Any], key: str, default: float) -> float:
    v = params.get(key)
    v = default if v is None else float(v)
    if v < 0:
        raise ConfigError(f"[loss] {key} must be >= 0, got {v}")
    return v


def attack_view(model: nn.Module) -> nn.Module:
    """The module the inner attacks and the clean targets run on: the plain module under
    ``torch.compile`` and DistributedDataParallel (in either order).

    Attack forwards/backwards must not go through DDP's gradient reducer, and they must not
    go through the compiled module either: they call it in eval mode, without parameter
    gradients and outside autocast, and every such change of state is a recompile (past
    dynamo's cache limit it falls back to eager without a word). The compiled module then
    only sees the training forward passes, one graph."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


def _attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: Mapping[str, Any], *,
            loss: Any, random_start: bool, x_init: torch.Tensor | None = None) -> torch.Tensor:
    """One inner attack through the shared core, in fp32, without early stopping, returning
    the last iterate (as PGD in Madry et al. and the TRADES reference). Trusted path
    (``check=False``): x is the trainer's batch, y its labels or the model's prediction, and
    x_init a projection into the box, so the core reads no value on the host."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x_adv = attacks.pgd(attack_view(model), x.float(), y, eps=s["eps"], norm=s["norm"], steps=s["steps"],
                            step_size=s["step_size"], loss=loss, random_start=random_start,
                            generator=s["seed_generator"], x_init=x_init, early_stop=False,
                            keep_best=False, check=False)
    return x_adv.detach()


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)


def _project(x: torch.Tensor, delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * (eps / n).clamp(max=1.0).view(-1, *([1] * (x.dim() - 1)))
    return (x + delta).clamp(0.0, 1.0)


# --------------------------------------------------------------------------- objectives
def kl_per_sample(p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """D_KL(p ‖ softmax(logits_q)) per sample (sum over classes), ``0·log 0 = 0``."""
    return (torch.special.xlogy(p, p) - p * F.log_softmax(logits_q, dim=1)).sum(dim=1)


def kl_from_logits(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """D_KL(softmax(logits_p) ‖ softmax(logits_q)) per sample, from log-softmaxes so that the
    gradient stays finite where a probability underflows to 0."""
    log_p = F.log_softmax(logits_p, dim=1)
    return (log_p.exp() * (log_p - F.log_softmax(logits_q, dim=1))).sum(dim=1)


def kl_objective(logits_adv: torch.Tensor, p_nat: torch.Tensor) -> torch.Tensor:
    """TRADES' inner objective (to MAXIMISE), in the attack core's argument order
    ``(logits at x', y = clean softmax f(x))``: D_KL(f(x) ‖ f(x')) per sample."""
    return kl_per_sample(p_nat, logits_adv)


def top_other_class(logits: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """argmax_{c ≠ pred} logits_c per sample (the most likely adversarial class of eq. 5/8/20)."""
    # scatter rather than a one-hot mask: F.one_hot range-checks pred with host reads
    return logits.detach().scatter(1, pred[:, None], float("-inf")).argmax(dim=1)


def toward_top_other(logits_adv: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Objective of the inner minimisation of eq. 8, written as a value to MAXIMISE:
    −ℓ_CE(f(x'), t(x')) with t(x') = argmax_{c ≠ F(x)} f(x')_c re-chosen at every x'."""
    t = top_other_class(logits_adv, pred)
    return F.log_softmax(logits_adv, dim=1).gather(1, t[:, None]).squeeze(1)


# --------------------------------------------------------------------------- inner points
def trades_point(model: nn.Module, x: torch.Tensor, p_nat: torch.Tensor,
                 s: Mapping[str, Any]) -> torch.Tensor:
    """TRADES' inner maximisation of eq. 7 as in the reference implementation: start at
    x + 0.001·N(0, I) (projected into the ball ∩ [0, 1]), ascend D_KL(f(x) ‖ f(x'))."""
    x_init = _project(x, TRADES_INIT_STD * _randn_like(x, s["generator"]), s["eps"], s["norm"])
    return _attack(model, x, p_nat, s, loss=kl_objective, random_start=False, x_init=x_init)


def _clean_eval(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax and prediction at x in eval mode and in fp32 (the attacks' view of the model):
    TRADES' target p(x) and ERA/DGA's F(x).

    Autocast is switched off here because the trainer calls the loss inside its autocast:
    without it p(x) and F(x) would come from a bf16/fp16 pass (casting the logits to fp32
    afterwards does not undo that), while the attacks they steer run in fp32."""
    inner = attack_view(model)
    # the model's own dtype, at least fp32 (a float64 model gets float64 inputs, not fp32 ones)
    dt = next((t.dtype for t in inner.parameters() if t.is_floating_point()), torch.float32)
    dt = torch.promote_types(dt, torch.float32)
    with torch.no_grad(), eval_mode(inner), torch.autocast(device_type=x.device.type, enabled=False):
        logits = inner(x.to(dt)).to(dt)
    return F.softmax(logits, dim=1), logits.argmax(dim=1)


def trades_terms(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, *,
                 kl_over_classes: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """ℓ_CE(f(x), y) (batch mean) and D_KL(f(x) ‖ f(x')) with TRADES' ``batchmean`` (the
    sum over classes, averaged over the batch); gradients flow through both f(x) and f(x')
    as in the TRADES reference.

    ``kl_over_classes=True`` divides the per-sample KL by the number of classes K: the
    authors' ERA/DGA call their ``trades_loss(..., reduction='none')``, which applies
    ``KLDivLoss(reduction='none')`` and then ``.mean(dim=1)``, a mean over the K class
    terms instead of their sum (their TRADES baseline keeps the sum)."""
    ce = F.cross_entropy(logits_nat, y)
    kl = kl_from_logits(logits_nat, logits_adv)
    if kl_over_classes:
        kl = kl / logits_nat.shape[1]
    return ce, kl.mean()


# --------------------------------------------------------------------------- losses
def pgd_at_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                params: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Madry et al. adversarial training, eq. 6: ℓ_CE(f(x'), y) with
    x' = argmax_{x' ∈ B_ε(x)} ℓ_CE(f(x'), y) (PGD with a random start)."""
    s = _settings(params)
    x_adv = _attack(model, x, y, s, loss="ce", random_start=True)
    loss = F.cross_entropy(model(x_adv), y)
    return loss, {"ce_adv": loss.detach()}


def trades_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                params: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TRADES, eq. 7: ℓ_CE(f(x), y) + γ · max_{x' ∈ B_ε(x)} D_KL(f(x) ‖ f(x')).

    As in the TRADES reference: the inner point maximises the KL from x + 0.001·N(0, I)
    with f(x) fixed (eval mode); the outer KL uses ``batchmean``. γ = ``params["gamma"]``
    (β_TRADES, default 6). ``beta`` is not used here (it weighs TRADES inside ERA/DGA).
    """
    s = _settings(params)
    gamma = _weight(params, "gamma", DEFAULT_GAMMA)
    p_nat, _ = _clean_eval(model, x)
    x_adv = trades_point(model, x, p_nat, s)
    ce, kl = trades_terms(model(x), model(x_adv), y)
    loss = ce + gamma * kl
    return loss, {"ce": ce.detach(), "kl": kl.detach()}


def era_inner_param(params: Mapping[str, Any], variant: str) -> str:
    """``era_inner`` checked against ``variant``: unset means ``"targeted"`` for the paper's
    equations and ``"untargeted-shared"`` for the authors' code, which has only that one."""
    inner = params.get("era_inner") or ("untargeted-shared" if variant == "authors" else "targeted")
    if inner not in ERA_INNER:
        raise ConfigError(f"[loss] era_inner must be one of {', '.join(ERA_INNER)}, got {inner!r}")
    if variant == "authors" and inner != "untargeted-shared":
        raise ConfigError("[loss] variant = \"authors\" uses the authors' single untargeted attack; "
                          f"era_inner = {inner!r} contradicts it (leave era_inner unset)")
    return inner


def _abstain_inner(model: nn.Module, x: torch.Tensor, params: Mapping[str, Any], variant: str):
    """Inner points shared by ERA and DGA: ``(s, pred, x_kl, x_rev)``."""
    s = _settings(params)
    inner = era_inner_param(params, variant)
    p_nat, pred = _clean_eval(model, x)
    if inner == "targeted":
        x_kl = trades_point(model, x, p_nat, s)
        x_rev = _attack(model, x, pred, s, loss=toward_top_other, random_start=True)
    else:
        x_kl = _attack(model, x, pred, s, loss="ce", random_start=True)
        x_rev = x_kl
    return s, pred, x_kl, x_rev


def _forward_points(model: nn.Module, x: torch.Tensor, x_kl: torch.Tensor, x_rev: torch.Tensor):
    logits_nat = model(x)
    logits_kl = model(x_kl)
    logits_rev = logits_kl if x_rev is x_kl else model(x_rev)
    return logits_nat, logits_kl, logits_rev


def _abstain_terms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: Mapping[str, Any]):
    """The parts ERA (eq. 5) and DGA (eq. 20) share: the inner attacks, the forward passes at
    x, the KL point and the eq. 8 point, and the TRADES terms (γ weighs the KL).

    ``variant = "authors"`` (``train_revadv.py``): the three forward passes run with the
    model in EVAL mode (gradients on; BatchNorm uses and keeps its running statistics,
    dropout is off), and the KL is divided by the number of classes."""
    variant = variant_param(params)
    gamma = _weight(params, "gamma", DEFAULT_GAMMA)
    _, pred, x_kl, x_rev = _abstain_inner(model, x, params, variant)
    authors = variant == "authors"
    if authors:
        with eval_mode(model):
            logits_nat, logits_kl, logits_rev = _forward_points(model, x, x_kl, x_rev)
    else:
        logits_nat, logits_kl, logits_rev = _forward_points(model, x, x_kl, x_rev)
    ce, kl = trades_terms(logits_nat, logits_kl, y, kl_over_classes=authors)
    return variant, pred, logits_nat, logits_rev, ce, kl, ce + gamma * kl


def era_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             params: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ERA, eq. 5: β·L_TRADES + (1 − f(x)_y) · min_{x' ∈ B_ε(x)} ℓ_CE(f(x'), t(x')),
    t(x') = argmax_{c ≠ F(x)} f(x')_c (eq. 8).

    ``variant = "paper"`` (default) with ``era_inner = "targeted"`` (its default): the
    equations as printed. Two inner attacks — TRADES' KL maximisation for the TRADES term
    (eq. 7), and for eq. 8 a PGD that MINIMISES the CE towards the most likely class other
    than the clean prediction F(x), the target re-chosen at every step as x' moves. The
    penalty is the CE at that point towards its final target. Training-mode forward passes,
    TRADES with the batch-mean KL (the sum over classes), exactly as the TRADES baseline.

    ``era_inner = "untargeted-shared"``: ONE untargeted PGD point (random start, CE
    w.r.t. the prediction F(x), maximised) serves as x' of the TRADES KL term and of the
    penalty (CE of f(x') towards its top class ≠ F(x)). One attack instead of two
    (cheaper), but neither the KL nor eq. 8 is optimised for its own term: the KL point is
    aimed at the prediction rather than the KL, and the penalty's x' maximises the loss of
    F(x) instead of minimising the CE to the adversarial class (close when the attack flips
    the prediction, different when it does not). With ``variant = "paper"`` it is an
    ablation of the attack only (batch-mean KL, training-mode logits): NOT the authors' code.

    ``variant = "authors"`` (ymerkli/robust-abstain ``train_revadv.py`` with
    ``loss/revadv.py::revadv_loss`` and ``loss/trades.py::trades_loss``): the shared
    untargeted point above (their foolbox ``LinfPGD``, 10 steps of 0.25·ε, random start,
    last iterate), logits at x and x' taken with the model in eval mode (BatchNorm
    frozen), and the KL divided by the number of classes K (``KLDivLoss(reduction='none')``
    then ``.mean(dim=1)``): per sample, (1 − f(x)_y)·ℓ_CE(f(x'), t) + β·[ℓ_CE(f(x), y) +
    γ·KL(f(x) ‖ f(x'))/K], averaged over the batch.

    The soft qualifier 1 − f(x)_y is NOT detached (as in the authors' code): its gradient
    additionally pushes f(x)_y up in proportion to the penalty. F(x) is the eval-mode
    prediction the attacks saw. γ (``gamma``) weighs the KL inside TRADES, β (``beta``)
    the whole TRADES term.
    """
    beta = _weight(params, "beta", DEFAULT_BETA)
    _, pred, logits_nat, logits_rev, ce, kl, trades = _abstain_terms(model, x, y, params)
    qualifier = 1.0 - F.softmax(logits_nat, dim=1).gather(1, y[:, None]).squeeze(1)
    target = top_other_class(logits_rev, pred)
    revadv = F.cross_entropy(logits_rev, target, reduction="none")
    penalty = (qualifier * revadv).mean()
    loss = beta * trades + penalty
    return loss, {"ce": ce.detach(), "kl": kl.detach(), "trades": trades.detach(),
                  "qualifier": qualifier.detach().mean(), "revadv": revadv.detach().mean(),
                  "penalty": penalty.detach()}


def dga_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             params: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DGA (Deep Gamblers abstain), eq. 20:
    β·L_TRADES − log(f(x)_y + max_{c ≠ F(x)} f(x')_c).

    x' is the adversarial point of ERA's inner attack (``era_inner`` as in
    :func:`era_loss`: the eq. 8 point that pushes towards the top class ≠ F(x), or the
    shared untargeted point).

    ``variant = "paper"`` (default): the two probabilities come from two softmaxes,
    exactly as eq. 20 writes it (their sum lies in [0, 2]).

    ``variant = "authors"`` (``loss/revadv.py::revadv_gambler_loss`` with ``conf = 1``):
    ONE joint softmax over the K + 1 logits [f(x)_1..K, z(x')_t] (t the top class ≠ F(x)
    at x'), so p_y + p_abstain ≤ 1; plus the authors' ERA differences (shared untargeted
    point, eval-mode logits, KL/K; see :func:`era_loss`).
    """
    beta = _weight(params, "beta", DEFAULT_BETA)
    variant, pred, logits_nat, logits_rev, ce, kl, trades = _abstain_terms(model, x, y, params)
    target = top_other_class(logits_rev, pred)
    if variant == "authors":
        joint = torch.cat([logits_nat, logits_rev.gather(1, target[:, None])], dim=1)
        log_p = F.log_softmax(joint, dim=1)
        # log(p_y + p_abstain) as a logsumexp of the two log-probabilities (no underflow)
        pair = torch.stack([log_p.gather(1, y[:, None]).squeeze(1), log_p[:, -1]], dim=1)
        gambler = -torch.logsumexp(pair, dim=1).mean()
    else:
        p_y = F.softmax(logits_nat, dim=1).gather(1, y[:, None]).squeeze(1)
        q = F.softmax(logits_rev, dim=1).gather(1, target[:, None]).squeeze(1)
        gambler = -torch.log((p_y + q).clamp_min(1e-12)).mean()
    loss = beta * trades + gambler
    return loss, {"ce": ce.detach(), "kl": kl.detach(), "trades": trades.detach(),
                  "gambler": gambler.detach()}

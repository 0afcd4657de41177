"""The one projected-gradient step loop behind PGD, APGD and every objective.

Threat model (paper Section 3): the ε-ball ``B^p_ε(x) = {x' : ||x' - x||_p ≤ ε}``,
p ∈ {∞, 2}, intersected with the [0, 1] box, in pixel space (normalisation lives inside
the model). The loop maximises a per-sample objective (see
:mod:`abstain.attacks.objectives`) by

* a gradient step per norm: ``x + η·sign(∇)`` (ℓ∞) or ``x + η·∇/||∇||_2`` (ℓ2),
* optional momentum (APGD, Croce & Hein 2020, Alg. 1: ``α = 0.75``),
* projection onto ball ∩ box (:func:`project`),
* optional checkpoints where the per-sample step size is halved and the iterate is
  restarted from the best point (APGD's two conditions, see :class:`Checkpoints`),
* per-sample tracking of the best point (highest objective),
* with ``early_stop``: a sample whose success test holds (e.g. the prediction left ``y``)
  is recorded and dropped from the batch, so it costs no further compute.

All bookkeeping lives on the input's device as tensors; the only host synchronisation in
the loop is the count of survivors when ``early_stop`` drops samples (one per step).
The model runs in eval mode with its parameters frozen (:func:`frozen_eval`); gradients
are taken with ``torch.autograd.grad`` w.r.t. the input only, so nothing accumulates in
the parameters, and mode and ``requires_grad`` flags are restored afterwards.

Random starts are drawn per sample from a counter-based hash of (seed, sample id,
coordinate), so a sample's start does not depend on which batch (or rank) it is in:
evaluation records are identical for every batch size and under ``torchrun``.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from ..errors import InputError
from ..validate import check_eps, check_inputs, check_norm
from .objectives import LossSpec, Objective, Success

_MASK32 = 0xFFFFFFFF


# ----------------------------------------------------------------------------- model state
@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode with ``requires_grad=False`` on every parameter; restore
    each module's mode and each parameter's flag on exit (also on error)."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


# ----------------------------------------------------------------------------- geometry
def _bview(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample values (N,) viewed to broadcast against ``like`` (N, ...)."""
    return v.view((-1,) + (1,) * (like.dim() - 1))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project ``x_adv`` onto ``B^p_ε(x) ∩ [0, 1]^d``.

    ℓ∞: the exact Euclidean projection (coordinate-wise clip to
    ``[max(0, x-ε), min(1, x+ε)]``). ℓ2: radial projection onto the ball, then the box
    clip; the clip never increases ``|x'_i - x_i|`` (x is in the box), so the result stays
    in the ball and the box.
    """
    if norm == "linf":
        return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)
    delta = x_adv - x
    n = delta.flatten(1).norm(dim=1)
    factor = torch.clamp(eps / (n + 1e-12), max=1.0)
    return (x + delta * _bview(factor, delta)).clamp_(0.0, 1.0)


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit dual norm: sign (ℓ∞) or normalised gradient (ℓ2)."""
    if norm == "linf":
        return grad.sign()
    n = grad.flatten(1).norm(dim=1)
    return grad / _bview(n + 1e-12, grad)


# ----------------------------------------------------------------------------- random starts
def _hash32(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixing function on int64 tensors holding values in [0, 2^32)."""
    h = (((h >> 16) ^ h) * 0x45D9F3B) & _MASK32
    h = (((h >> 16) ^ h) * 0x45D9F3B) & _MASK32
    return (h >> 16) ^ h


def hashed_uniform(seed: int, ids: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """Uniform(0, 1) values of shape (len(ids), numel), a pure function of
    (seed, id, coordinate): independent of batch composition and device."""
    dev = ids.device
    key = _hash32((ids.long() * 0x2C1B3C6D + (seed & _MASK32)) & _MASK32)
    j = torch.arange(numel, device=dev, dtype=torch.long)
    h = _hash32((key.view(-1, 1) + j.view(1, -1) * 0x9E3779B1) & _MASK32)
    h = _hash32(h ^ key.view(-1, 1))
    return ((h.to(torch.float64) + 0.5) / 4294967296.0).to(dtype)


def random_start(x: torch.Tensor, eps: float, norm: str, seed: int, ids: torch.Tensor) -> torch.Tensor:
    """A random point of the ball ∩ box, as in APGD: ℓ∞ ``x + ε·t/||t||∞`` with t uniform in
    [-1, 1]^d; ℓ2 ``x + ε·g/||g||_2`` with g Gaussian (Box–Muller); then clipped to the box."""
    n, numel = x.shape[0], x[0].numel()
    u = hashed_uniform(seed, ids, numel, torch.float64)
    if norm == "linf":
        t = 2.0 * u - 1.0
        t = t / t.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    else:
        u2 = hashed_uniform(seed ^ 0x5BD1E995, ids, numel, torch.float64)
        t = torch.sqrt(-2.0 * torch.log(u)) * torch.cos(2.0 * math.pi * u2)
        t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
    t = t.to(x.dtype).view_as(x) if n else x.clone()
    return (x + eps * t).clamp_(0.0, 1.0)


def draw_seed(generator: torch.Generator | None) -> int:
    """One 31-bit seed from ``generator`` (or torch's global RNG)."""
    if generator is None:
        return int(torch.randint(0, 2**31 - 1, (1,)).item())
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device).item())


# ----------------------------------------------------------------------------- validation
def check_attack_args(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
                      steps: int, needs_labels: bool, x_init: torch.Tensor | None = None) -> float:
    """Validate the common attack arguments; raise :class:`InputError` naming the problem."""
    if not isinstance(model, nn.Module) and not callable(model):
        raise InputError(f"model must be an nn.Module or callable, got {type(model).__name__}")
    eps = check_eps(eps)
    check_norm(norm)
    check_inputs(x)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise InputError(f"steps must be a non-negative integer, got {steps!r}")
    if not isinstance(y, torch.Tensor):
        raise InputError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() < 1 or y.shape[0] != x.shape[0]:
        raise InputError(f"y has leading dimension {tuple(y.shape)[:1]} but x has {x.shape[0]} samples")
    if needs_labels:
        if y.dim() != 1:
            raise InputError(f"y must be a 1-D tensor of class indices, got shape {tuple(y.shape)}")
        if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
            raise InputError(f"y must be an integer tensor of class indices, got {y.dtype}")
        if int(y.min()) < 0:
            raise InputError("y has negative class indices")
    if y.device != x.device:
        raise InputError(f"x is on {x.device} but y is on {y.device}")
    if x_init is not None:
        if not isinstance(x_init, torch.Tensor) or x_init.shape != x.shape:
            raise InputError(f"x_init must be a tensor of the shape of x {tuple(x.shape)}, got "
                             f"{tuple(x_init.shape) if isinstance(x_init, torch.Tensor) else type(x_init).__name__}")
        if not bool(torch.isfinite(x_init).all()):
            raise InputError("x_init contains NaN or Inf")
    return eps


def check_class_range(y: torch.Tensor, num_classes: int) -> None:
    if int(y.max()) >= num_classes:
        raise InputError(f"y has class indices >= {num_classes}, the number of model outputs")


# ----------------------------------------------------------------------------- step schedule
@dataclass(frozen=True)
class Checkpoints:
    """APGD's step-size checkpoints (Croce & Hein 2020, Sec. 3.2).

    Checkpoints ``w_j = ⌈p_j·N⌉`` with ``p_0 = 0``, ``p_1 = 0.22``,
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, in the integer form of the
    reference code (first interval ``max(⌊0.22 N⌋, 1)``, shrinking by ``max(⌊0.03 N⌋, 1)``
    down to ``max(⌊0.06 N⌋, 1)``). At a checkpoint a sample's step size is halved and its
    iterate restarted from its best point if

    1. the objective increased in fewer than ``rho`` = 75 % of the steps since the last
       checkpoint, or
    2. the step size was not reduced at the last checkpoint and the best objective has not
       improved since.
    """

    steps: int
    rho: float = 0.75

    def iterations(self) -> dict[int, int]:
        """Loop index i (0-based, after the i-th step) -> interval length k."""
        n = self.steps
        k = max(int(0.22 * n), 1)
        k_min, decr = max(int(0.06 * n), 1), max(int(0.03 * n), 1)
        out: dict[int, int] = {}
        i = k - 1
        while i < n:
            out[i] = k
            k = max(k - decr, k_min)
            i += k
        return out


# ----------------------------------------------------------------------------- the loop
@dataclass
class AttackResult:
    x_adv: torch.Tensor          # (N, ...) returned points, inside ball ∩ box
    success: torch.Tensor        # (N,) bool: success test held at x_adv during the run
    best: torch.Tensor           # (N,) objective value at x_adv (+inf-free; NaN never)


def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, steps: int,
        objective: Objective, success: Success | None, step_size: float,
        momentum: float | None = None, checkpoints: Checkpoints | None = None,
        x_start: torch.Tensor, early_stop: bool = False, keep_best: bool = True) -> AttackResult:
    """Projected gradient ascent on ``objective`` from ``x_start`` (already in ball ∩ box).

    ``step_size`` is the initial per-sample step η (APGD: 2ε). With ``momentum`` α the
    update is APGD's ``x_{k+1} = P(x_k + α(z_{k+1} - x_k) + (1-α)(x_k - x_{k-1}))`` with
    ``z_{k+1} = P(x_k + η·dir(∇f(x_k)))`` (α = 1 in the first step); without it, plain PGD.

    Returns, per sample, the first point where ``success`` held (``early_stop``; the
    sample is then dropped from the batch), else the point of highest objective value
    among the evaluated iterates (``keep_best``) or the last iterate.
    The caller has put the model in eval mode with frozen parameters.
    """
    n = x.shape[0]
    dev = x.device
    track_success = early_stop and success is not None
    keep_best = keep_best or checkpoints is not None     # APGD restarts from the best point
    x_out = x_start.detach().clone()
    succ_out = torch.zeros(n, dtype=torch.bool, device=dev)
    best_out = torch.full((n,), float("-inf"), dtype=x.dtype, device=dev)

    def evaluate(z: torch.Tensor, yy: torch.Tensor, need_grad: bool):
        if need_grad:
            z = z.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = model(z)
                val = objective(logits, yy)
                if val.shape != (z.shape[0],):
                    raise InputError(f"attack objective must return one value per sample, shape "
                                     f"({z.shape[0]},), got {tuple(val.shape)}")
                g, = torch.autograd.grad(val.sum(), z)
            return logits.detach(), val.detach(), g.detach()
        with torch.no_grad():
            logits = model(z)
            return logits, objective(logits, yy), None

    ids = torch.arange(n, device=dev)
    x_nat, yy = x.detach(), y.detach()
    cur = x_start.detach()
    logits, val, grad = evaluate(cur, yy, need_grad=steps > 0)
    if logits.dim() != 2:
        raise InputError(f"the model must return logits of shape (N, classes), got {tuple(logits.shape)}")
    val = torch.nan_to_num(val, nan=float("-inf"))
    best_val, x_best = val.clone(), cur.clone()
    grad_best = grad.clone() if (grad is not None and checkpoints is not None) else grad
    eta = torch.full((n,), float(step_size), dtype=x.dtype, device=dev)
    prev = cur
    sched = checkpoints.iterations() if checkpoints is not None else {}
    if checkpoints is not None:
        n_incr = torch.zeros(n, dtype=x.dtype, device=dev)
        reduced_last = torch.ones(n, dtype=torch.bool, device=dev)
        best_last = best_val.clone()
        last_val = val.clone()

    def drop(ok: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Record the successful samples; return the indices of the others (in order) and the
        number of successes. ``nonzero`` is the one host synchronisation per step."""
        where = torch.nonzero(ok).flatten()
        n_succ = int(where.numel())
        if n_succ:
            idx = ids[where]
            x_out[idx] = cur[where]
            succ_out[idx] = True
            best_out[idx] = val[where]
        # a stable sort puts the unsuccessful first, in order: no further synchronisation
        rest = torch.argsort(ok.to(torch.int8), stable=True)[: ok.shape[0] - n_succ]
        return rest, n_succ

    n_ok = 0
    if track_success:
        keep, n_ok = drop(success(logits, yy))
    for i in range(steps):
        if n_ok:
            if n_ok == ids.shape[0]:
                break
            ids, x_nat, yy, cur, prev, grad = ids[keep], x_nat[keep], yy[keep], cur[keep], prev[keep], grad[keep]
            best_val, x_best, eta = best_val[keep], x_best[keep], eta[keep]
            if checkpoints is not None:
                grad_best, n_incr, reduced_last = grad_best[keep], n_incr[keep], reduced_last[keep]
                best_last, last_val = best_last[keep], last_val[keep]
        with torch.no_grad():
            z = project(cur + _bview(eta, cur) * _direction(grad, norm), x_nat, eps, norm)
            if momentum is not None and i > 0:
                z = project(cur + momentum * (z - cur) + (1.0 - momentum) * (cur - prev), x_nat, eps, norm)
            prev, cur = cur, z
        last = i == steps - 1
        if last and not (keep_best or track_success):
            break
        logits, val, grad = evaluate(cur, yy, need_grad=not last)
        with torch.no_grad():
            val = torch.nan_to_num(val, nan=float("-inf"))
            if track_success:   # record before a checkpoint may move ``cur``
                keep, n_ok = drop(success(logits, yy))
            if keep_best:
                better = val > best_val
                best_val = torch.where(better, val, best_val)
                x_best = torch.where(_bview(better, cur), cur, x_best)
                if checkpoints is not None and not last:
                    grad_best = torch.where(_bview(better, grad), grad, grad_best)
            if checkpoints is not None and not last:
                n_incr += (val > last_val).to(n_incr.dtype)
                last_val = val
                k = sched.get(i)
                if k is not None:
                    cond1 = n_incr <= checkpoints.rho * k
                    cond2 = ~reduced_last & (best_last >= best_val)
                    red = cond1 | cond2
                    reduced_last, best_last = red, best_val.clone()
                    eta = torch.where(red, eta / 2.0, eta)
                    rb = _bview(red, cur)
                    cur = torch.where(rb, x_best, cur)
                    prev = torch.where(rb, x_best, prev)   # restart without momentum
                    grad = torch.where(rb, grad_best, grad)
                    n_incr.zero_()
    with torch.no_grad():
        if n_ok:
            # samples that succeeded at the last evaluation were recorded by drop()
            ids, x_best, best_val, cur = ids[keep], x_best[keep], best_val[keep], cur[keep]
        final = x_best if keep_best else cur
        x_out[ids] = final
        best_out[ids] = best_val if keep_best else best_out[ids]
        x_out = project(x_out, x.detach(), eps, norm)
    return AttackResult(x_out, succ_out, best_out)


# ----------------------------------------------------------------------------- entry point
def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, steps: int,
           loss: LossSpec, step_size: float | None, momentum: float | None, checkpoints: Checkpoints | None,
           default_step: float | None = None,
           restarts: int = 1, random_init: bool = True, x_init: torch.Tensor | None = None,
           generator: torch.Generator | None = None, early_stop: bool = False, keep_best: bool = True,
           sample_ids: torch.Tensor | None = None, return_result: bool = False
           ) -> torch.Tensor | AttackResult:
    """Validate, freeze the model, and run ``restarts`` times the step loop :func:`run`.

    Shared by :func:`abstain.attacks.pgd` and :func:`abstain.attacks.apgd`. With
    ``early_stop`` and an objective with a success test, each restart attacks only the
    samples not yet successful; otherwise every restart attacks all samples and the point
    of highest objective over the restarts is kept. ``step_size=None`` means
    ``default_step·ε/steps`` when ``default_step`` is given (PGD), else ``2ε`` (APGD).
    """
    from .objectives import resolve

    objective, success, needs_labels = resolve(loss)
    eps = check_attack_args(model, x, y, eps, norm, steps, needs_labels, x_init)
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise InputError(f"restarts must be a positive integer, got {restarts!r}")
    if step_size is not None:
        step_size = check_eps(step_size, "step_size")
    n = x.shape[0]
    ids_all = (torch.arange(n, device=x.device) if sample_ids is None
               else sample_ids.to(device=x.device, dtype=torch.long))
    if ids_all.shape != (n,):
        raise InputError(f"sample_ids must have shape ({n},), got {tuple(ids_all.shape)}")
    if needs_labels:   # the class count comes from the model's output
        with frozen_eval(model), torch.no_grad():
            out1 = model(x[:1])
        if out1.dim() != 2:
            raise InputError(f"the model must return logits of shape (N, classes), got {tuple(out1.shape)}")
        check_class_range(y, out1.shape[1])
    if eps == 0.0:
        out = x.detach().clone()
        if return_result:
            return AttackResult(out, torch.zeros(n, dtype=torch.bool, device=x.device),
                                torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device))
        return out
    if step_size is not None:
        eta = step_size
    elif default_step is not None:
        eta = default_step * eps / max(steps, 1)
    else:
        eta = 2.0 * eps
    seed = draw_seed(generator) if (random_init and x_init is None) or restarts > 1 else 0
    track = early_stop and success is not None
    x_out = x.detach().clone()
    succ = torch.zeros(n, dtype=torch.bool, device=x.device)
    best = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
    with frozen_eval(model):
        for r in range(restarts):
            if track and r > 0:
                idx = torch.nonzero(~succ).flatten()
                if idx.numel() == 0:
                    break
            else:
                idx = None
            xs, ys, ids = (x, y, ids_all) if idx is None else (x[idx], y[idx], ids_all[idx])
            if x_init is not None and r == 0:
                start = project(x_init.detach().to(x.dtype) if idx is None else x_init[idx].detach(), xs, eps, norm)
            elif random_init or r > 0:
                start = random_start(xs, eps, norm, (seed + 0x9E3779B1 * r) & _MASK32, ids)
            else:
                start = xs.detach().clone()
            res = run(model, xs, ys, eps=eps, norm=norm, steps=steps, objective=objective,
                      success=success, step_size=eta, momentum=momentum, checkpoints=checkpoints,
                      x_start=start, early_stop=early_stop, keep_best=keep_best)
            with torch.no_grad():
                if idx is None and r == 0:
                    x_out, succ, best = res.x_adv, res.success, res.best
                elif idx is not None:
                    # new successes replace; the others keep their highest objective so far
                    better = res.success | (res.best > best[idx])
                    x_out[idx] = torch.where(_bview(better, res.x_adv), res.x_adv, x_out[idx])
                    best[idx] = torch.where(better, res.best, best[idx])
                    succ[idx] = res.success
                else:
                    better = res.best > best
                    x_out = torch.where(_bview(better, x_out), res.x_adv, x_out)
                    best = torch.where(better, res.best, best)
    if return_result:
        return AttackResult(x_out, succ, best)
    return x_out


__all__ = ["frozen_eval", "project", "random_start", "hashed_uniform", "draw_seed", "run", "attack",
           "Checkpoints", "AttackResult", "check_attack_args", "check_class_range"]

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
from dataclasses import dataclass, fields
from typing import Iterator

import torch
from torch import nn

from ..errors import InputError
from ..validate import check_eps, check_inputs, check_norm
from .objectives import LossSpec, Objective, Success, resolve

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
                      steps: int, needs_labels: bool, x_init: torch.Tensor | None = None,
                      values: bool = True) -> float:
    """Validate the common attack arguments; raise :class:`InputError` naming the problem.

    ``values=False`` (the trusted path) skips the checks that read tensor values on the
    host: ``x`` finite and in [0, 1], labels non-negative, ``x_init`` finite."""
    if not isinstance(model, nn.Module) and not callable(model):
        raise InputError(f"model must be an nn.Module or callable, got {type(model).__name__}")
    eps = check_eps(eps)
    check_norm(norm)
    check_inputs(x, values=values)
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
        if values and int(y.min()) < 0:
            raise InputError("y has negative class indices")
    if y.device != x.device:
        raise InputError(f"x is on {x.device} but y is on {y.device}")
    if x_init is not None:
        if not isinstance(x_init, torch.Tensor) or x_init.shape != x.shape:
            raise InputError(f"x_init must be a tensor of the shape of x {tuple(x.shape)}, got "
                             f"{tuple(x_init.shape) if isinstance(x_init, torch.Tensor) else type(x_init).__name__}")
        if values and not bool(torch.isfinite(x_init).all()):
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
    # (N, K) the model's logits at x_adv, from the evaluation that found it (None without
    # ``keep_best``); for ℓ2 they are those of the point before the final projection, which
    # can move it by rounding only
    logits: torch.Tensor | None = None


def _evaluate(model: nn.Module, objective: Objective, z: torch.Tensor, yy: torch.Tensor,
              need_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Logits, per-sample objective and (``need_grad``) its gradient w.r.t. the input at ``z``."""
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


@dataclass
class _State:
    """Per-sample tensors of the samples still attacked, row ``j`` being sample ``ids[j]``.
    The APGD checkpoint fields are ``None`` without checkpoints."""

    ids: torch.Tensor            # positions in the batch given to :func:`run`
    x_nat: torch.Tensor          # centres of the balls
    yy: torch.Tensor             # the objective's second argument
    cur: torch.Tensor            # current iterate
    prev: torch.Tensor           # previous iterate (momentum)
    grad: torch.Tensor | None    # objective gradient at ``cur``
    best_val: torch.Tensor       # highest objective so far
    x_best: torch.Tensor         # where it was reached
    eta: torch.Tensor            # per-sample step size
    grad_best: torch.Tensor | None = None      # gradient at ``x_best``
    n_incr: torch.Tensor | None = None         # steps that increased the objective since the last checkpoint
    reduced_last: torch.Tensor | None = None   # step size halved at the last checkpoint
    best_last: torch.Tensor | None = None      # ``best_val`` at the last checkpoint
    last_val: torch.Tensor | None = None       # objective at the previous iterate
    logits_best: torch.Tensor | None = None    # logits at ``x_best`` (with ``keep_best``)

    def select(self, keep: torch.Tensor) -> None:
        """Keep rows ``keep`` (in that order) of every per-sample tensor."""
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None:
                setattr(self, f.name, v[keep])


def _initial_state(x: torch.Tensor, y: torch.Tensor, cur: torch.Tensor, val: torch.Tensor,
                   grad: torch.Tensor | None, step_size: float, with_checkpoints: bool) -> _State:
    n = x.shape[0]
    s = _State(ids=torch.arange(n, device=x.device), x_nat=x.detach(), yy=y.detach(), cur=cur,
               prev=cur, grad=grad, best_val=val.clone(), x_best=cur.clone(),
               eta=torch.full((n,), float(step_size), dtype=x.dtype, device=x.device))
    if with_checkpoints:
        s.grad_best = grad.clone() if grad is not None else None
        s.n_incr = torch.zeros(n, dtype=x.dtype, device=x.device)
        s.reduced_last = torch.ones(n, dtype=torch.bool, device=x.device)
        s.best_last = s.best_val.clone()
        s.last_val = val.clone()
    return s


@dataclass
class _Outputs:
    """The per-sample results of :func:`run`, indexed by position in its batch."""

    x: torch.Tensor
    success: torch.Tensor
    best: torch.Tensor
    logits: torch.Tensor | None = None

    def record_successes(self, s: _State, val: torch.Tensor, ok: torch.Tensor,
                         logits: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Record the rows of ``s`` where ``ok`` holds (point ``s.cur``, value ``val``, and
        with ``self.logits`` its ``logits``);
        return the indices of the other rows (in order) and the number of successes.
        ``nonzero`` is the one host synchronisation per step."""
        where = torch.nonzero(ok).flatten()
        n_succ = int(where.numel())
        if n_succ:
            idx = s.ids[where]
            self.x[idx] = s.cur[where]
            self.success[idx] = True
            self.best[idx] = val[where]
            if self.logits is not None:
                self.logits[idx] = logits[where]
        # a stable sort puts the unsuccessful first, in order: no further synchronisation
        rest = torch.argsort(ok.to(torch.int8), stable=True)[: ok.shape[0] - n_succ]
        return rest, n_succ


def _step(s: _State, i: int, eps: float, norm: str, momentum: float | None) -> None:
    """One projected gradient step from ``s.cur`` (APGD's momentum from the second step)."""
    with torch.no_grad():
        z = project(s.cur + _bview(s.eta, s.cur) * _direction(s.grad, norm), s.x_nat, eps, norm)
        if momentum is not None and i > 0:
            z = project(s.cur + momentum * (z - s.cur) + (1.0 - momentum) * (s.cur - s.prev), s.x_nat, eps, norm)
        s.prev, s.cur = s.cur, z


def _update_best(s: _State, val: torch.Tensor, grad_too: bool, logits: torch.Tensor) -> None:
    """Keep, per sample, the point (its logits, and with ``grad_too`` its gradient) of highest objective."""
    better = val > s.best_val
    s.best_val = torch.where(better, val, s.best_val)
    s.x_best = torch.where(_bview(better, s.cur), s.cur, s.x_best)
    s.logits_best = torch.where(better.view(-1, 1), logits, s.logits_best)
    if grad_too:
        s.grad_best = torch.where(_bview(better, s.grad), s.grad, s.grad_best)


def _checkpoint_bookkeeping(s: _State, val: torch.Tensor, k: int | None, rho: float) -> None:
    """Count the steps that increased the objective; at a checkpoint (interval length
    ``k``) halve the step size of the stalled samples and restart them from their best
    point without momentum (the two conditions of :class:`Checkpoints`)."""
    s.n_incr += (val > s.last_val).to(s.n_incr.dtype)
    s.last_val = val
    if k is None:
        return
    cond1 = s.n_incr <= rho * k
    cond2 = ~s.reduced_last & (s.best_last >= s.best_val)
    red = cond1 | cond2
    s.reduced_last, s.best_last = red, s.best_val.clone()
    s.eta = torch.where(red, s.eta / 2.0, s.eta)
    rb = _bview(red, s.cur)
    s.cur = torch.where(rb, s.x_best, s.cur)
    s.prev = torch.where(rb, s.x_best, s.prev)   # restart without momentum
    s.grad = torch.where(rb, s.grad_best, s.grad)
    s.n_incr.zero_()


def _final_points(out: _Outputs, s: _State, keep: torch.Tensor | None, keep_best: bool,
                  x: torch.Tensor, eps: float, norm: str) -> AttackResult:
    """Write the samples not recorded as successes (rows ``keep`` of ``s`` when the last
    evaluation recorded some): their best point (``keep_best``) or last iterate."""
    with torch.no_grad():
        ids, x_best, best_val, cur, lg = s.ids, s.x_best, s.best_val, s.cur, s.logits_best
        if keep is not None:
            # samples that succeeded at the last evaluation were recorded already
            ids, x_best, best_val, cur = ids[keep], x_best[keep], best_val[keep], cur[keep]
            lg = lg[keep] if lg is not None else None
        final = x_best if keep_best else cur
        out.x[ids] = final
        out.best[ids] = best_val if keep_best else out.best[ids]
        if out.logits is not None:
            out.logits[ids] = lg
        x_out = project(out.x, x.detach(), eps, norm)
    return AttackResult(x_out, out.success, out.best, out.logits)


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
    among the evaluated iterates (``keep_best``) or the last iterate; with ``keep_best``
    also the logits there (no extra forward pass: those of the evaluation that found it).
    The caller has put the model in eval mode with frozen parameters.
    """
    n, dev = x.shape[0], x.device
    track_success = early_stop and success is not None
    keep_best = keep_best or checkpoints is not None     # APGD restarts from the best point
    out = _Outputs(x_start.detach().clone(), torch.zeros(n, dtype=torch.bool, device=dev),
                   torch.full((n,), float("-inf"), dtype=x.dtype, device=dev))
    cur = x_start.detach()
    logits, val, grad = _evaluate(model, objective, cur, y.detach(), need_grad=steps > 0)
    if logits.dim() != 2:
        raise InputError(f"the model must return logits of shape (N, classes), got {tuple(logits.shape)}")
    val = torch.nan_to_num(val, nan=float("-inf"))
    s = _initial_state(x, y, cur, val, grad, step_size, checkpoints is not None)
    if keep_best:
        out.logits = torch.empty_like(logits)
        s.logits_best = logits
    sched = checkpoints.iterations() if checkpoints is not None else {}
    keep, n_ok = None, 0
    if track_success:
        keep, n_ok = out.record_successes(s, val, success(logits, s.yy), logits)
    for i in range(steps):
        if n_ok:
            if n_ok == s.ids.shape[0]:
                break
            s.select(keep)
        _step(s, i, eps, norm, momentum)
        last = i == steps - 1
        if last and not (keep_best or track_success):
            break
        logits, val, s.grad = _evaluate(model, objective, s.cur, s.yy, need_grad=not last)
        with torch.no_grad():
            val = torch.nan_to_num(val, nan=float("-inf"))
            if track_success:   # record before a checkpoint may move ``cur``
                keep, n_ok = out.record_successes(s, val, success(logits, s.yy), logits)
            if keep_best:
                _update_best(s, val, grad_too=checkpoints is not None and not last, logits=logits)
            if checkpoints is not None and not last:
                _checkpoint_bookkeeping(s, val, sched.get(i), checkpoints.rho)
    return _final_points(out, s, keep if n_ok else None, keep_best, x, eps, norm)


# ----------------------------------------------------------------------------- entry point
def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, steps: int,
           loss: LossSpec, step_size: float | None, momentum: float | None, checkpoints: Checkpoints | None,
           default_step: float | None = None,
           restarts: int = 1, random_init: bool = True, x_init: torch.Tensor | None = None,
           generator: torch.Generator | None = None, early_stop: bool = False, keep_best: bool = True,
           sample_ids: torch.Tensor | None = None, return_result: bool = False, check: bool = True
           ) -> torch.Tensor | AttackResult:
    """Validate, freeze the model, and run ``restarts`` times the step loop :func:`run`.

    Shared by :func:`abstain.attacks.pgd` and :func:`abstain.attacks.apgd`. With
    ``early_stop`` and an objective with a success test, each restart attacks only the
    samples not yet successful; otherwise every restart attacks all samples and the point
    of highest objective over the restarts is kept. ``step_size=None`` means
    ``default_step·ε/steps`` when ``default_step`` is given (PGD), else ``2ε`` (APGD).

    ``check=False`` is the trusted path for callers whose inputs were checked before (the
    losses' inner attacks, on batches the trainer checked): it skips the checks that read
    tensor values on the host (``x`` finite and in [0, 1], labels in range with the class
    count probed by a forward pass, ``x_init`` finite), 3 to 5 device synchronisations per
    attack on CUDA. Types, shapes and arguments are still checked; results are identical.
    """
    objective, success, needs_labels = resolve(loss)
    eps = check_attack_args(model, x, y, eps, norm, steps, needs_labels, x_init, values=check)
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise InputError(f"restarts must be a positive integer, got {restarts!r}")
    if step_size is not None:
        step_size = check_eps(step_size, "step_size")
    n = x.shape[0]
    ids_all = (torch.arange(n, device=x.device) if sample_ids is None
               else sample_ids.to(device=x.device, dtype=torch.long))
    if ids_all.shape != (n,):
        raise InputError(f"sample_ids must have shape ({n},), got {tuple(ids_all.shape)}")
    if needs_labels and check:   # the class count comes from the model's output
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
    lg = None
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
                    x_out, succ, best, lg = res.x_adv, res.success, res.best, res.logits
                elif idx is not None:
                    # new successes replace; the others keep their highest objective so far
                    better = res.success | (res.best > best[idx])
                    x_out[idx] = torch.where(_bview(better, res.x_adv), res.x_adv, x_out[idx])
                    best[idx] = torch.where(better, res.best, best[idx])
                    succ[idx] = res.success
                    if lg is not None and res.logits is not None:
                        lg[idx] = torch.where(better.view(-1, 1), res.logits, lg[idx])
                else:
                    better = res.best > best
                    x_out = torch.where(_bview(better, x_out), res.x_adv, x_out)
                    best = torch.where(better, res.best, best)
                    if lg is not None and res.logits is not None:
                        lg = torch.where(better.view(-1, 1), res.logits, lg)
    if return_result:
        return AttackResult(x_out, succ, best, lg)
    return x_out


__all__ = ["frozen_eval", "project", "random_start", "hashed_uniform", "draw_seed", "run", "attack",
           "Checkpoints", "AttackResult", "check_attack_args", "check_class_range"]

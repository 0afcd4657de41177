"""Checks that a model's numbers can be trusted, wherever they are computed (issue 25, item 3).

* :class:`FiniteGuard` wraps a classifier and remembers, on its device and without a host
  synchronisation per call, whether any forward pass returned a NaN or infinite logit: at a
  clean input, at every attack iterate (APGD/PGD, Sec. 7) and at every noise sample of
  randomized smoothing (CERTIFY). ``argmax`` of a NaN row is an arbitrary class, so a
  robustness or certification verdict computed from it means nothing.
* :func:`check_batch_independent` refuses a model whose outputs for an input depend on the
  other inputs of its batch (a BatchNorm that stays in training mode): ``f(x[:m])`` must equal
  ``f(x[:2m])[:m]`` up to the rounding of a different summation order.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from .errors import InputError
from .utils import eval_mode


class FiniteGuard(nn.Module):
    """``model`` unchanged, plus a device flag set when any output row is not finite."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.bad: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, torch.Tensor) and torch.is_floating_point(out):
            flag = ~torch.isfinite(out.detach()).all()
            self.bad = flag if self.bad is None else self.bad | flag
        return out

    def tripped(self) -> bool:
        """Whether a non-finite logit was seen since the last :meth:`reset` (one sync)."""
        return self.bad is not None and bool(self.bad)

    def reset(self) -> None:
        self.bad = None


def first_nonfinite(model: nn.Module, points: torch.Tensor, ids: torch.Tensor) -> int | None:
    """The id of the first row of ``points`` (ids ``ids``) where ``model`` gives a non-finite
    logit, or None."""
    with torch.no_grad():
        bad = ~torch.isfinite(model(points)).all(dim=1)
    where = torch.nonzero(bad).flatten()
    return int(ids[where].min()) if where.numel() else None


def refuse_nonfinite(where: str, first: int | None, ids: torch.Tensor) -> None:
    """Raise the one-line error of a non-finite logit met ``where`` (e.g. "attack point")."""
    what = f"sample {first}" if first is not None else f"samples {int(ids.min())}..{int(ids.max())}"
    raise InputError(f"the model returns NaN or infinite logits at an {where} of {what}; "
                     "refusing to record a verdict from them")


def batch_tolerance(model: nn.Module, logits: torch.Tensor, dev: torch.device) -> float:
    """The largest difference between ``f(x[:m])`` and ``f(x[:2m])[:m]`` that rounding alone
    explains, for logits of magnitude ``max|logits|``: a batch-independent model computes the
    same sums in another order, whose error is bounded by γ_P·Σ|terms| (Higham, Accuracy and
    Stability, eq. 3.5) with P the number of parameters as the longest chain of operations;
    the probabilistic bound √P·u (Higham & Mary 2019) times 16 for the terms' magnitude.
    u is the unit roundoff of the logits' dtype (TF32's 2⁻¹¹ on CUDA where TF32 is allowed)."""
    u = torch.finfo(logits.dtype).eps
    if dev.type == "cuda" and (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32):
        u = max(u, 2.0 ** -11)
    p = max(1, sum(t.numel() for t in model.parameters()))
    scale = max(1.0, float(logits.detach().abs().max()))
    return 16.0 * math.sqrt(p) * u * scale


def check_batch_independent(model: nn.Module, x: torch.Tensor, what: str, *, allow: bool = False,
                            flag: str = "--allow-batch-dependent",
                            forward: Callable[[torch.Tensor], Any] | None = None) -> None:
    """Refuse (unless ``allow``) a model whose logits on the first inputs depend on the batch:
    ``f(x[:m])`` against ``f(x[:2m])[:m]`` (m = min(4, N // 2)) and ``f(x[:1])`` against
    ``f(x[:2m])[:1]``, in eval mode, beyond :func:`batch_tolerance`."""
    if allow or x.shape[0] < 2:
        return
    m = min(4, x.shape[0] // 2)
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = x[:2 * m].to(dev)
    f = forward or model
    with eval_mode(model), torch.no_grad():
        full = f(x)
        parts = [(m, f(x[:m]))]
        try:
            parts.append((1, f(x[:1])))
        except (RuntimeError, ValueError):     # e.g. a training-mode BatchNorm on one input
            raise InputError(f"{what} fails on a batch of one input but not on {2 * m}: its outputs "
                             f"depend on the batch; pass {flag} to evaluate it anyway") from None
    tol = batch_tolerance(model, full, dev)
    for k, part in parts:
        diff = float((part.to(full.dtype) - full[:k]).abs().max())
        if not diff <= tol:
            raise InputError(f"{what} gives other logits for the same inputs in a batch of {k} than in "
                             f"a batch of {2 * m} (max difference {diff:.3g} > rounding bound {tol:.3g}): its "
                             f"outputs depend on the batch (BatchNorm in training mode?); pass {flag} to "
                             "evaluate it anyway")


def check_behaviour(model: nn.Module, x: torch.Tensor, what: str, *, needs_grad: bool) -> None:
    """Refuse, with one line, a model that changes its input in place (every attack and noise
    point would be corrupted), and (``needs_grad``: the attacks follow the gradient of the
    logits, Sec. 7) one whose output carries no gradient with respect to its input."""
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = x[:2].to(dev)
    if any(p.dtype == torch.float64 for p in model.parameters()):
        x = x.double()
    probe = x.clone()
    with eval_mode(model), torch.no_grad():
        model(probe)
    if not torch.equal(probe, x):
        raise InputError(f"{what} changes its input in place; clone it in forward() (x = x.clone())")
    if not needs_grad:
        return
    xg = x.clone().requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        out = model(xg)
    if not (isinstance(out, torch.Tensor) and out.requires_grad):
        raise InputError(f"{what} returns logits that carry no gradient (detached, or computed under "
                         "no_grad); the attacks need the gradient of the logits with respect to the input")


__all__ = ["check_behaviour", "FiniteGuard", "first_nonfinite", "refuse_nonfinite", "batch_tolerance", "check_batch_independent"]

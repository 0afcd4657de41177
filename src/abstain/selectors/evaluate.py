"""Per-sample records of abstain models and everything computed from them.

:func:`abstain_records` runs a selector on a test set and returns record columns
(``index``, ``label`` and the selector's columns, see each selector's ``records``);
:func:`core_records` does the same for a core model (``pred``, ``robust@ε``).
:func:`summarize`, :func:`tau_curve` and :func:`candidate` recompute metrics, τ sweeps and
composition candidates from the records alone, so reports never need the models.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..attacks import is_robust
from ..errors import InputError
from ..metrics import abstain_metrics, partition
from ..seeds import derive, generator
from ..records import column
from .base import Decisions, Selector, ThresholdSelector, predict
from .cri import CertifiedRobustnessIndicator
from .eri import RobustnessIndicator
from .sn import SelectionNetwork, selection_net, selection_targets, train_selection_network
from .sr import ATTACKS, SoftmaxResponse

KINDS: dict[str, type[Selector]] = {"eri": RobustnessIndicator, "cri": CertifiedRobustnessIndicator,
                                    "sr": SoftmaxResponse, "sn": SelectionNetwork}
DEFAULT_TAU = {"sr": 0.9, "sn": 0.5}


def selector_class(kind: str) -> type[Selector]:
    if kind not in KINDS:
        raise InputError(f"unknown selector {kind!r}; known: {', '.join(KINDS)}")
    return KINDS[kind]


def build_selector(kind: str, model: nn.Module, *, eps: float, norm: str = "linf", steps: int = 40,
                   seed: int = 0, tau: float | None = None, train: tuple[torch.Tensor, torch.Tensor] | None = None,
                   sn: Mapping[str, Any] | None = None, cri: Mapping[str, Any] | None = None,
                   attack: str | None = None) -> Selector:
    """The selector ``kind`` for ``model``. S_SN is trained here on ``train = (x, y)``
    (targets from F's robustness and accuracy, :func:`selection_targets`) with the options
    ``sn`` (``epochs``, ``hidden``, ``samples``); S_CRI takes ``cri`` (``num_classes``,
    ``sigma``, ``n0``, ``n``, ``alpha``, ``batch_size``)."""
    selector_class(kind)
    if kind == "eri":
        return RobustnessIndicator(model, eps=eps, norm=norm, steps=steps, seed=seed, attack=attack)
    if kind == "sr":
        return SoftmaxResponse(model, tau=DEFAULT_TAU["sr"] if tau is None else tau, eps=eps, norm=norm,
                               steps=steps, seed=seed, attack=attack)
    if kind == "cri":
        if not cri:
            raise InputError("S_CRI needs the smoothing options (num_classes, sigma, n0, n, alpha)")
        return CertifiedRobustnessIndicator(model, eps=eps, norm=norm, seed=seed, **dict(cri))
    if train is None:
        raise InputError("S_SN needs training data (x, y) for its selection network")
    opts = dict(sn or {})
    x_tr, y_tr = train
    n = int(opts.get("samples") or x_tr.shape[0])
    if n < x_tr.shape[0]:
        idx = torch.randperm(x_tr.shape[0], generator=generator(seed, "sn-subset"))[:n]
        x_tr, y_tr = x_tr[idx], y_tr[idx]
    t = selection_targets(model, x_tr, y_tr, eps=eps, norm=norm, steps=steps, seed=seed, attack=attack)
    # the initial weights depend on the seed only, not on what ran before in the process
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive(seed, "sn-init"))
        net = selection_net(tuple(x_tr.shape[1:]), hidden=int(opts.get("hidden", 128))).to(x_tr.device)
    train_selection_network(net, x_tr, t, eps=eps, norm=norm, epochs=int(opts.get("epochs", 60)), seed=seed)
    return SelectionNetwork(model, net, tau=DEFAULT_TAU["sn"] if tau is None else tau, eps=eps,
                            norm=norm, steps=steps, seed=seed, attack=attack)


def _cols(index: Any, y: torch.Tensor, rec: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    out: dict[str, Any] = {"index": np.asarray(index), "label": y.detach().cpu().numpy()}
    for k, v in rec.items():
        out[k] = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    return out


def _chunked(fn, x: torch.Tensor, ids: torch.Tensor, batch_size: int | None) -> dict[str, torch.Tensor]:
    """``fn(x_chunk, ids_chunk)`` on chunks of ``batch_size`` inputs (all at once when None),
    columns concatenated."""
    if batch_size is None or x.shape[0] <= batch_size:
        return fn(x, ids)
    parts = [fn(x[i:i + batch_size], ids[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return {k: torch.cat([torch.as_tensor(p[k]) for p in parts]) for k in parts[0]}


def _ids(index: Any, n: int, device: torch.device) -> torch.Tensor:
    ids = torch.as_tensor(np.asarray(index), dtype=torch.long).reshape(-1)
    if ids.shape[0] != n:
        raise InputError(f"index has {ids.shape[0]} entries for {n} inputs")
    return ids.to(device)


def abstain_records(selector: Selector, x: torch.Tensor, y: torch.Tensor, index: Any,
                    batch_size: int | None = None) -> dict[str, Any]:
    """``index``, ``label`` and the selector's record columns on (x, y), in chunks of
    ``batch_size`` inputs. ``index``: the samples' dataset indices; the attacks' random
    starts follow them (:mod:`abstain.seeds`), so the records depend neither on
    ``batch_size`` nor on the subset evaluated, and ``robust@ε`` is that of
    :func:`abstain.evaluate` with the same seed and attack."""
    return _cols(index, y, _chunked(selector.records, x, _ids(index, x.shape[0], x.device), batch_size))


def core_records(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: Any, *, eps: float,
                 norm: str = "linf", steps: int = 40, seed: int = 0,
                 batch_size: int | None = None, attack: str | None = None) -> dict[str, Any]:
    """``index``, ``label``, ``pred`` and ``robust@ε`` (:func:`abstain.attacks.is_robust`,
    random starts from ``seed`` and the dataset ``index``, as in :func:`abstain.evaluate`)."""
    def one(xb: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.enable_grad():
            rob = is_robust(model, xb, eps=eps, norm=norm, steps=steps, attack=attack,
                            generator=generator(seed), sample_ids=ids)
        return {"pred": predict(model, xb), column("robust", eps): rob.to(torch.bool)}

    return _cols(index, y, _chunked(one, x, _ids(index, x.shape[0], x.device), batch_size))


def decisions(kind: str, records: Mapping[str, Any], eps: float, tau: float | None = None,
              attacks: Sequence[str] | None = None, ball: bool = True) -> Decisions:
    """Selector decisions from records. For S_SR, ``attacks`` restricts the attacks whose
    points count and ``ball=False`` reads plain (clean-input) SR from the same records."""
    cls = selector_class(kind)
    if kind == "sr" and (attacks is not None or not ball):
        return SoftmaxResponse.decisions_for(records, eps, DEFAULT_TAU["sr"] if tau is None else tau,
                                             ATTACKS if attacks is None else attacks, ball)
    if issubclass(cls, ThresholdSelector) and tau is None:
        tau = DEFAULT_TAU[kind]
    return cls.decisions(records, eps, tau)


def robust_pred(kind: str, records: Mapping[str, Any], eps: float,
                attacks: Sequence[str] | None = None) -> np.ndarray:
    if kind == "sr":
        return SoftmaxResponse.robust_pred(records, eps, ATTACKS if attacks is None else attacks)
    return selector_class(kind).robust_pred(records, eps)


def summarize(kind: str, records: Mapping[str, Any], eps: float, tau: float | None = None,
              attacks: Sequence[str] | None = None, ball: bool = True) -> dict[str, float]:
    """Abstain metrics (:func:`abstain.metrics.abstain_metrics`) plus the partition of F."""
    d = decisions(kind, records, eps, tau, attacks, ball)
    rp = robust_pred(kind, records, eps, attacks)
    out = abstain_metrics(records["label"], records["pred"], d.selected, d.robust_selected, rp)
    out.update(partition(records["label"], records["pred"], rp))
    if issubclass(selector_class(kind), ThresholdSelector):
        out["tau"] = float(DEFAULT_TAU[kind] if tau is None else tau)
    return out


def tau_curve(kind: str, records: Mapping[str, Any], eps: float, attacks: Sequence[str] | None = None,
              points: int = 101, ball: bool = True) -> list[dict[str, float]]:
    """The τ sweep over [0, 1) of a threshold selector: per τ its ``rob_sel``,
    ``sel_rob_acc`` and ``coverage`` (Fig. 3 curves, Fig. 6)."""
    if not issubclass(selector_class(kind), ThresholdSelector):
        raise InputError(f"selector {kind!r} has no threshold to sweep")
    grid = np.linspace(0.0, 1.0, points, endpoint=False)
    out = []
    for tau in grid:
        m = summarize(kind, records, eps, float(tau), attacks, ball)
        out.append({"tau": float(tau), "rob_sel": m["rob_sel"], "sel_rob_acc": m["sel_rob_acc"],
                    "coverage": m["coverage"]})
    return out


def candidate(name: str, kind: str, records: Mapping[str, Any], eps: float, tau: float | None = None):
    """A :class:`abstain.composition.Candidate` (composition stage) from abstain records."""
    from ..composition import Candidate  # noqa: PLC0415  cycle: composition imports selectors

    return Candidate(name, np.asarray(records["pred"], dtype=np.int64), robust_pred(kind, records, eps),
                     decisions(kind, records, eps, tau), {"kind": kind, "tau": tau})


__all__ = ["KINDS", "DEFAULT_TAU", "selector_class", "build_selector", "abstain_records",
           "core_records", "decisions", "robust_pred", "summarize", "tau_curve", "candidate"]

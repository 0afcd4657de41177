"""The Python API: :func:`evaluate`, :func:`certify` and :func:`compose`, each the command of
the same name on an ``nn.Module`` and data in memory.

Each takes any ``nn.Module`` mapping inputs in [0, 1] to logits (``normalize=(mean, std)``
wraps one that expects normalised inputs), any ``(x, y)`` ``Dataset`` or ``DataLoader``, and a
radius or a list of radii (pixel space), and returns :class:`abstain.records.Records`: the
per-sample columns the command writes, with a ``summary`` of the metrics recomputed from
them, keyed by radius (:class:`abstain.records.RadiusDict`: ``rec.summary["partition"][2/255]``
or ``["0.00784314"]``).

=============  ==============================================================================
``evaluate``   ``index, label, pred, robust@ε`` (and 2ε); summary ``partition`` (eq. 1–3)
``certify``    ``index, label, pred, radius, count, samples, certified@ε`` (and 2ε); summary
               ``certified``: per ε the certified partition and S_CRI (Tables 2, 3)
``compose``    the selector's columns, ``core.pred``, ``core.robust@ε`` and the composition's
               ``h.pred@ε``, ``h.rob_acc@ε``, ``h.rob_acc_paper@ε``; summary ``abstain``,
               ``core``, ``robust``, ``composition`` per ε (eq. 14, 15)
=============  ==============================================================================
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import distributed
from .abstain_job import CRI_DEFAULTS, AbstainSettings, compose_at
from .chunks import ChunkedJob
from .data import TensorDataset
from .errors import InputError
from .evaluation import evaluate as _evaluate
from .jobs import CertifySettings
from .models import NormalizedModel
from .records import CERTIFIED, ROBUST, RadiusDict, Records, parse_column
from .utils import resolve_device

Normalize = tuple[Sequence[float], Sequence[float]]


def tensors_of(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``(x, y)`` of a Dataset or DataLoader as two tensors (x float in [0, 1])."""
    x, y = getattr(data, "x", None), getattr(data, "y", None)
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        return x, y
    tensors = getattr(data, "tensors", None)
    if isinstance(tensors, tuple) and len(tensors) >= 2 and all(isinstance(t, torch.Tensor) for t in tensors[:2]):
        return tensors[0], tensors[1]
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        if len(data) == 0:
            raise InputError("data is empty")
        data = DataLoader(data, batch_size=256, shuffle=False)
    if not isinstance(data, DataLoader):
        raise InputError(f"data must be a torch Dataset or DataLoader of (x, y), got {type(data).__name__}")
    xs, ys = [], []
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise InputError("data must yield (x, y) pairs")
        xs.append(torch.as_tensor(batch[0]))
        ys.append(torch.as_tensor(batch[1]).reshape(-1))
    if not xs:
        raise InputError("data yielded no samples")
    return torch.cat(xs), torch.cat(ys)


def _wrapped(model: nn.Module, normalize: Normalize | None) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be an nn.Module, got {type(model).__name__}")
    if normalize is None:
        return model
    try:
        mean, std = normalize
        return NormalizedModel(model, mean, std)
    except (TypeError, ValueError) as e:
        raise InputError(f"normalize must be (mean, std) with positive std: {e}") from None


def _eps_list(eps: float | Sequence[float]) -> list[float]:
    out = [float(eps)] if isinstance(eps, (int, float)) else [float(e) for e in eps]
    if not out:
        raise InputError("eps: give at least one radius")
    return out


def evaluate(model: nn.Module, data: Any, *, eps: float | Sequence[float], norm: str = "linf",
             steps: int = 40, double_eps: bool = True,
             batch_size: int | None = None, device: Any = "auto", seed: int = 0,
             normalize: Normalize | None = None, save_adversarial: str | None = None,
             show_progress: bool = True, attack: str | None = None) -> Records:
    """Per-sample natural predictions and empirical robustness of ``model`` on ``data`` at
    every radius of ``eps`` (and its double): :func:`abstain.evaluation.evaluate`, whose
    docstring gives the columns and every argument. Under ``torchrun`` the rows are shared
    out over the ranks in chunks (:class:`abstain.chunks.ChunkedJob`) and every rank gets
    the gathered records (``save_adversarial`` is then refused: use ``abstain evaluate
    --save-adversarial``)."""
    kw = dict(eps=eps, norm=norm, steps=steps, double_eps=double_eps,
              batch_size=batch_size, device=device, seed=seed, normalize=normalize, attack=attack)
    if not distributed.is_distributed():
        return _evaluate(model, data, save_adversarial=save_adversarial, show_progress=show_progress, **kw)
    if save_adversarial is not None:
        raise InputError("save_adversarial under torchrun: use `abstain evaluate --save-adversarial`")
    x, y = tensors_of(data)
    whole = TensorDataset(x, y.reshape(-1).long(), int(y.max()) + 1 if len(y) else 1, "data")
    job = ChunkedJob(len(y), -(-len(y) // distributed.world_size()), desc="evaluate" if show_progress else None)

    def chunk(k: int, rows: torch.Tensor) -> Records:
        return _evaluate(model, whole.subset(rows), show_progress=False, index_offset=int(rows[0]), **kw)

    cols = job.run(lambda k, rows: chunk(k, rows).columns)
    assert cols is not None
    rec = Records(cols)
    rec.summary["partition"] = rec.partitions()
    return rec


def certify(model: nn.Module, data: Any, *, sigma: float, eps: float | Sequence[float],
            num_classes: int | None = None, n0: int = CertifySettings.n0, n: int = CertifySettings.n,
            alpha: float = CertifySettings.alpha, sequential: bool = False,
            noise_batch_size: int = CertifySettings.batch_size, chunk: int | None = None, seed: int = 0,
            device: Any = "auto", normalize: Normalize | None = None, on_progress: Any = None) -> Records:
    """Randomized-smoothing records of ``model`` on ``data``: Cohen et al.'s CERTIFY at level
    ``alpha`` (``n0`` selection and ``n`` estimation noise samples of level ``sigma``, in
    forward batches of ``noise_batch_size``), or the sequential test (``sequential=True``), deciding
    every ℓ2 radius of ``eps`` and its double (robust selection of S_CRI, eq. 13/14). The
    records are those of ``abstain certify`` on the same inputs, seed and chunking."""
    from .smoothing.records import (  # noqa: PLC0415  heavy: scipy, certify only
        certify_chunk, certify_metrics, plan_chunks)

    x, y = tensors_of(data)
    s = CertifySettings(sigma=sigma, eps=_eps_list(eps), n0=n0, n=n, alpha=alpha, samples=max(len(y), 1),
                        sequential=sequential, batch_size=noise_batch_size, chunk=chunk, seed=seed)
    s.check()
    k = num_classes if num_classes is not None else getattr(data, "num_classes", None)
    if k is None:
        raise InputError("certify: give num_classes (the data does not say how many classes it has)")
    dev = distributed.local_device(resolve_device(device))
    plan = plan_chunks(_wrapped(model, normalize).to(dev), num_classes=int(k), sigma=s.sigma, eps=list(s.eps),
                       n0=s.n0, n=s.n, alpha=s.alpha, batch_size=s.batch_size, sequential=s.sequential,
                       seed=s.seed, chunk=s.chunk, device=dev)

    def chunk(k: int, rows: torch.Tensor) -> dict[str, np.ndarray]:
        cols = certify_chunk(plan, k, x[rows], y[rows], rows)
        if on_progress is not None:
            on_progress(len(rows))
        return cols

    # one place shards the chunks over torchrun ranks (every rank gets the gathered records)
    rec = Records(ChunkedJob(len(y), plan.chunk).run(chunk))
    metrics = certify_metrics(rec, list(s.eps))
    rec.summary["certified"] = RadiusDict({k: v for k, v in metrics.items() if isinstance(v, dict)})
    rec.summary.update({k: v for k, v in metrics.items() if not isinstance(v, dict)})
    return rec


def compose(robust: nn.Module, core: nn.Module, data: Any, *, selector: str, eps: float | Sequence[float],
            norm: str = "linf", steps: int = 40, tau: float | None = None, seed: int = 0, train: Any = None,
            device: Any = "auto", attack: str | None = None, normalize: Normalize | None = None,
            sigma: float | None = None, n0: int = CRI_DEFAULTS["n0"], n: int = CRI_DEFAULTS["n"],
            alpha: float = CRI_DEFAULTS["alpha"], noise_batch_size: int = CRI_DEFAULTS["batch_size"],
            sn_epochs: int = 60, sn_samples: int | None = None, batch_size: int = 512) -> Records:
    """The abstain model (``robust``, S_``selector``) and its 2-compositional model with
    ``core`` (eq. 15) on ``data`` at every radius of ``eps``, as ``abstain abstain`` computes
    them. ``selector``: ``"eri"`` (eq. 12), ``"cri"`` (eq. 13; needs ``sigma``, with ``n0``,
    ``n``, ``alpha``, ``noise_batch_size``; ℓ2), ``"sr"`` (eq. 16; threshold ``tau``, default
    0.9) or ``"sn"`` (selection network trained on ``train``, an ``(x, y)`` Dataset, for
    ``sn_epochs`` on ``sn_samples`` of it; threshold ``tau``, default 0.5). ``normalize`` wraps
    both models. The rows are the samples of ``data`` (``index`` = position)."""
    cri = None
    if selector == "cri":
        if sigma is None:
            raise InputError("selector 'cri' needs sigma (the smoothing noise level)")
        cri = {"sigma": float(sigma), "n0": int(n0), "n": int(n), "alpha": float(alpha),
               "batch_size": int(noise_batch_size)}
    s = AbstainSettings(selector=selector, eps=_eps_list(eps), norm=norm, steps=steps, tau=tau, seed=seed,
                        attack=attack, batch_size=batch_size,
                        sn={"epochs": int(sn_epochs), "samples": sn_samples}, cri=cri)
    eps_list = s.check()
    dev = resolve_device(device)
    robust, core = _wrapped(robust, normalize).to(dev), _wrapped(core, normalize).to(dev)
    x, y = tensors_of(data)
    if selector == "cri":
        with torch.no_grad():
            s.cri["num_classes"] = int(robust(x[:1].to(dev)).shape[1])
    tr = None
    if train is not None:
        xt, yt = tensors_of(train)
        tr = (xt.to(dev), yt.to(dev))
    elif selector == "sn":
        raise InputError("selector 'sn' needs train, the data its selection network is trained on")
    x, y = x.to(dev), y.to(dev)
    index = np.arange(len(y))
    out: Records | None = None
    summary: dict[str, RadiusDict] = {"abstain": RadiusDict(), "core": RadiusDict(), "robust": RadiusDict(),
                                      "composition": RadiusDict()}
    for e in eps_list:
        rec = compose_at(robust, core, x, y, eps=e, s=s, index=index, train=tr)
        for key in summary:
            summary[key][e] = rec.summary[key]
        out = rec if out is None else _union(out, rec)
    assert out is not None
    return Records(out.columns, {**summary, "tau": s.tau, "selector": selector})


def _union(a: Records, b: Records) -> Records:
    """The columns of two radii's tables in one. A robustness flag both hold (the radius 2ε
    of one ε is the radius of another) is robust only where both say so (an adversarial
    example found by either attack is one); any other shared column keeps the smaller ε's
    value (the attacks are the same calls, so they agree unless an attack's outcome depends
    on which samples shared its batch)."""
    cols = a.columns
    for k, v in b.items():
        parsed = parse_column(k)
        if k not in cols:
            cols[k] = v
        elif parsed is not None and parsed[1] in (ROBUST, CERTIFIED) and v.dtype == bool:
            cols[k] = cols[k] & v
    return Records(cols)


__all__ = ["evaluate", "certify", "compose", "tensors_of"]

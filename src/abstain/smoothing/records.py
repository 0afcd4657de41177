"""Certify a dataset into per-sample records, and the certified metrics computed from them.

Used by ``abstain certify`` and the ``digits-certify`` stage (one implementation).

Reproducibility and torchrun. The inputs are cut into chunks of ``chunk`` consecutive inputs
(of the given order); chunk k gets its own generator seeded with ``(seed, k)`` on the model's
device. Under torchrun :class:`abstain.chunks.ChunkedJob` gives ranks whole chunks and merges
the records sorted by ``index``, so one process and ``torchrun --nproc-per-node N`` write
identical records for the same ``seed``, ``chunk`` and ``batch_size`` (on the same device type).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..model_checks import FiniteGuard, first_nonfinite, refuse_nonfinite
from ..records import CERTIFIED, Records, column
from ..errors import InputError
from ..validate import check_eps
from .sequential import certify_sequential
from .smooth import ABSTAIN, Smooth, check_alpha, check_count, warn_if_unreachable


def decision_radii(eps: Sequence[float]) -> list[float]:
    """The asked radii and their doubles (robust selection of S_CRI needs 2ε), sorted."""
    eps = [check_eps(e) for e in eps]
    return sorted(set(eps) | {2 * e for e in eps})


def default_chunk(n: int, batch_size: int, sequential: bool, n0: int) -> int:
    """Inputs per certification call: enough samples for a few full forward batches, and at
    least ``⌈batch_size / n0⌉`` inputs so that the selection pass (n0 samples per input)
    fills a forward batch too. Before the second bound a large ``n`` (100,000 with batch
    1000) meant one input per chunk; it changes the default chunking, hence the per-chunk
    generators and so the default certify records (not their dependence on the ranks)."""
    if sequential:
        return 64
    return max(1, min(64, (4 * batch_size) // n), math.ceil(batch_size / n0))


def chunk_generator(seed: int, chunk: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed((int(seed) * 1_000_003 + int(chunk)) % (2**63))


@dataclass
class ChunkPlan:
    """How :func:`certify_records` cuts its inputs: ``chunk`` consecutive inputs per call,
    chunk k certified with the generator of ``(seed, k)``."""

    smooth: Smooth
    radii: list[float]
    n0: int
    n: int
    alpha: float
    batch_size: int
    sequential: bool
    seed: int
    chunk: int
    device: torch.device


def plan_chunks(model: nn.Module, *, num_classes: int, sigma: float, eps: Sequence[float], n0: int, n: int,
                alpha: float, batch_size: int, sequential: bool = False, seed: int = 0,
                chunk: int | None = None, device: torch.device | None = None,
                double: bool = True) -> ChunkPlan:
    """Check the settings (warning when ``n`` cannot reach a radius) and fix the chunking."""
    n0, n = check_count(n0, "n0"), check_count(n, "n")
    alpha = check_alpha(alpha)
    radii = decision_radii(eps) if double else sorted({check_eps(e) for e in eps})
    smooth = Smooth(model, num_classes, sigma)
    if not sequential:
        for e in radii:
            warn_if_unreachable(n, alpha, smooth.sigma, e)
    dev = device if device is not None else next((p.device for p in model.parameters()), torch.device("cpu"))
    return ChunkPlan(smooth, radii, n0, n, alpha, batch_size, sequential, seed,
                     chunk or default_chunk(n, batch_size, sequential, n0), torch.device(dev))


def certify_chunk(plan: ChunkPlan, k: int, x: torch.Tensor, y: torch.Tensor,
                  index: torch.Tensor) -> dict[str, np.ndarray]:
    """The record columns of chunk ``k`` (its inputs ``x``, labels ``y``, dataset ``index``):
    see :func:`certify_records`. Only this chunk's inputs are on the device, so memory does
    not grow with the number of inputs."""
    xb = x.to(plan.device)
    with torch.no_grad():
        clean = plan.smooth.base_classifier(xb)
    if not bool(torch.isfinite(clean).all()):
        raise InputError(f"the model returns NaN or infinite logits on inputs {int(index[0])}..{int(index[-1])}")
    gen = chunk_generator(plan.seed, k, plan.device)
    t0 = time.perf_counter()
    base = plan.smooth.base_classifier
    guard = plan.smooth.base_classifier = FiniteGuard(base)   # NaN at any noise point: no verdict
    try:
        if plan.sequential:
            res = certify_sequential(plan.smooth, xb, plan.radii, n0=plan.n0, n_max=plan.n, alpha=plan.alpha,
                                     batch_size=plan.batch_size, generator=gen)
            bound = f"cp-union-{len(res.schedule)}"
            decisions = res.decisions.numpy()
        else:
            res = plan.smooth.certify_batch(xb, plan.n0, plan.n, plan.alpha, plan.batch_size, gen, details=True)
            bound = "clopper-pearson"
            decisions = ((res.pred != ABSTAIN)[:, None]
                         & (res.radius[:, None] >= torch.tensor(plan.radii, dtype=torch.float64))).numpy()
    finally:
        plan.smooth.base_classifier = base
    if guard.tripped():
        _refuse_nonfinite_noise(base, xb, index, plan.smooth.sigma, plan.seed)
    if plan.device.type == "cuda":
        torch.cuda.synchronize(plan.device)
    seconds = time.perf_counter() - t0
    samples = res.samples.numpy()
    labels = y.cpu().numpy()
    pred = res.pred.numpy()
    cols = {"index": index.cpu().numpy(), "label": labels, "pred": pred, "radius": res.radius.numpy(),
            "correct": pred == labels, "n0": res.n0.numpy(), "n": res.n.numpy(), "count": res.count.numpy(),
            "alpha": res.alpha.numpy(), "p_lower": res.p_lower.numpy(),
            "bound": np.full(len(pred), bound, dtype=object), "samples": samples,
            "seconds": seconds * samples / max(1, samples.sum())}
    cols.update({column(CERTIFIED, e): decisions[:, j] for j, e in enumerate(plan.radii)})
    return {k_: np.asarray(v) for k_, v in cols.items()}


def _refuse_nonfinite_noise(model: nn.Module, x: torch.Tensor, index: torch.Tensor, sigma: float,
                            seed: int) -> None:
    """The one-line error of a non-finite logit at a noise point, naming the first input whose
    noisy copies (8 fresh draws each, seeded) show it, else the chunk's range of inputs."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    copies = 8
    xs = x.repeat_interleave(copies, dim=0)
    noisy = xs + sigma * torch.randn(xs.shape, generator=g, device=x.device, dtype=xs.dtype)
    ids = index.to(x.device).repeat_interleave(copies)
    refuse_nonfinite("noise point", first_nonfinite(model, noisy, ids), index)


def empty_columns(radii: Sequence[float]) -> dict[str, np.ndarray]:
    """Record columns with no rows (a rank without chunks)."""
    return {"index": np.zeros(0, np.int64), "label": np.zeros(0, np.int64), "pred": np.zeros(0, np.int64),
            "radius": np.zeros(0), "correct": np.zeros(0, bool), "n0": np.zeros(0, np.int64),
            "n": np.zeros(0, np.int64), "count": np.zeros(0, np.int64), "alpha": np.zeros(0),
            "p_lower": np.zeros(0), "bound": np.zeros(0, object), "samples": np.zeros(0, np.int64),
            "seconds": np.zeros(0), **{column(CERTIFIED, e): np.zeros(0, bool) for e in radii}}


def certify_records(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, *,
                    num_classes: int, sigma: float, eps: Sequence[float], n0: int, n: int,
                    alpha: float, batch_size: int, sequential: bool = False, seed: int = 0,
                    chunk: int | None = None, device: torch.device | None = None,
                    double: bool = True,
                    on_progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Certify every row of ``x`` with the smoothed ``model`` and return per-sample record
    columns (sorted by ``index``; this process only: :class:`abstain.chunks.ChunkedJob`
    shares chunks out over torchrun ranks):

    ``index, label, pred`` (c_A or -1 = abstain), ``radius`` (certified ℓ2 radius, 0 when
    abstained), ``correct`` (pred == label), ``n0, n`` (selection / estimation samples used),
    ``count`` (hits of c_A among the n), ``alpha``, ``p_lower`` (the lower bound on p_A),
    ``bound`` (``clopper-pearson`` or ``cp-union-K``: Clopper–Pearson at α/K over K looks),
    ``samples`` (forward passes = n0 + n), ``seconds`` (the chunk's wall time shared in
    proportion to samples), ``certified@<ε>`` for every ε of :func:`decision_radii`.
    ``sequential``: :func:`certify_sequential` with ``n_max = n`` deciding those radii.
    """
    plan = plan_chunks(model, num_classes=num_classes, sigma=sigma, eps=eps, n0=n0, n=n, alpha=alpha,
                       batch_size=batch_size, sequential=sequential, seed=seed, chunk=chunk,
                       device=device if device is not None else x.device, double=double)
    n_chunks = math.ceil(x.shape[0] / plan.chunk)
    parts = []
    for k in range(n_chunks):
        sl = slice(k * plan.chunk, min((k + 1) * plan.chunk, x.shape[0]))
        parts.append(certify_chunk(plan, k, x[sl], y[sl], index[sl]))
        if on_progress is not None:
            on_progress(len(parts[-1]["index"]))
    if not parts:
        return empty_columns(plan.radii)
    cols = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
    order = np.argsort(cols["index"], kind="stable")
    return {c: v[order] for c, v in cols.items()}


def certify_metrics(columns: Mapping[str, Any], eps: Sequence[float]) -> dict[str, Any]:
    """Certified metrics per ε from the records (every number recomputed from the columns).

    For each ε: the four-way partition (robust = certified radius ≥ ε; abstentions and
    radius-0 points stay in the denominator, counted as not robust and, for an abstention,
    inaccurate), ``cert_acc`` (Cohen's certified accuracy = ``rob_acc``), ``abstain`` (the
    fraction where CERTIFY abstained), and the S_CRI abstain model (eq. 13): selected =
    certified at ε, robust selection (eq. 14) = certified at 2ε (S_CRI(x') = 1 for every x' in
    the ε-ball needs G constant on the 2ε-ball, as for S_ERI; the paper's Section 5 remark
    that radius ≥ ε suffices is reported as ``rob_sel_eps``). Also ``samples_mean``.
    """
    rec = Records(columns)
    pred = rec.pred()
    out: dict[str, Any] = {}
    for e in eps:
        m = rec.partition(e, CERTIFIED)
        m["cert_acc"] = m["rob_acc"]
        m["abstain"] = float((pred == ABSTAIN).mean())
        m.update(rec.indicator_metrics(e, CERTIFIED))
        m["rob_sel_eps"] = float(rec.flag(CERTIFIED, e).mean())
        out[f"{e:g}"] = m
    out["n_samples"] = rec.rows
    out["samples_mean"] = float(np.mean(columns["samples"]))
    out["radius_mean"] = float(np.mean(columns["radius"]))
    return out


def sequential_comparison(fixed: Mapping[str, Any], seq: Mapping[str, Any], eps: Sequence[float]) -> dict[str, float]:
    """``samples_ratio`` (fixed-N forward passes / sequential forward passes, summed over the
    same inputs) and ``decision_agreement`` (fraction of (input, ε) decisions that agree) of two
    record sets over the same indices."""
    if not np.array_equal(np.asarray(fixed["index"]), np.asarray(seq["index"])):
        raise InputError("fixed-N and sequential records cover different inputs")
    agree = [np.asarray(fixed[column(CERTIFIED, e)], bool) == np.asarray(seq[column(CERTIFIED, e)], bool) for e in eps]
    agree_all = np.stack(agree, 1)
    return {
        "samples_ratio": float(np.sum(fixed["samples"]) / np.sum(seq["samples"])),
        "fixed_samples_mean": float(np.mean(fixed["samples"])),
        "sequential_samples_mean": float(np.mean(seq["samples"])),
        "decision_agreement": float(agree_all.mean()),
        "input_agreement": float(agree_all.all(1).mean()),
        **{f"decision_agreement@{e:g}": float(a.mean()) for e, a in zip(eps, agree)},
        "n_inputs": int(len(agree_all)),
    }

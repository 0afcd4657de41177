"""Shared pieces of the robust-training stages (fig1, digits-partition, digits-finetune):
training a variant into ``ctx.work/<variant>-s<seed>``, reading records back and
formatting table cells. Every reported number is recomputed from per-sample records."""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .. import records
from ..metrics import abstain_metrics, partition

_RECORD = re.compile(r"^(?P<variant>.+)-s(?P<seed>\d+)$")


def pct(values: list[float] | float, digits: int = 1) -> str:
    """``mean ± std`` in percent (std over seeds, ddof=0), or a single value."""
    arr = np.atleast_1d(np.asarray(values, dtype=float)) * 100
    if arr.size == 1:
        return f"{arr[0]:.{digits}f}"
    return f"{arr.mean():.{digits}f} ± {arr.std():.{digits}f}"


def robust_column(cols: Mapping[str, Any], eps: float) -> np.ndarray:
    return records.flag(cols, records.ROBUST, eps)


def eps_of_columns(cols: Mapping[str, Any]) -> list[float]:
    """The radii of the ``robust@<ε>`` columns, ascending."""
    return records.radii(cols)


def partition_at(cols: Mapping[str, Any], eps: float) -> dict[str, float]:
    """Four-way partition (eq. 2, 3) of a records table at radius ``eps``."""
    return partition(cols["label"], cols["pred"], robust_column(cols, eps))


def eri_metrics(cols: Mapping[str, Any], eps: float) -> dict[str, float]:
    """The robustness-indicator abstain model (F, S_ERI) (Section 5): S selects x when F is
    robust at x in the ε-ball; robust selection (eq. 14) needs robustness in the 2ε-ball."""
    r1, r2 = robust_column(cols, eps), robust_column(cols, 2 * eps)
    return abstain_metrics(cols["label"], cols["pred"], r1, r2, r1)


def read_stage_records(stage_dir: Path, prefix: str = "") -> dict[str, dict[int, dict[str, np.ndarray]]]:
    """``records/<prefix><variant>-s<seed>.csv`` -> {variant: {seed: columns}}; without a
    prefix, files whose name holds ``--`` (prefixed record sets) are skipped."""
    from ..records import read_records

    out: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for f in sorted((Path(stage_dir) / "records").glob(f"{prefix}*.csv")):
        stem = f.stem[len(prefix):]
        if "--" in stem:
            continue
        m = _RECORD.match(stem)
        if m:
            out.setdefault(m.group("variant"), {})[int(m.group("seed"))] = read_records(f)
    return out


def per_seed(records: Mapping[int, Mapping[str, Any]],
             fn: Callable[[Mapping[str, Any]], dict[str, float]]) -> dict[str, list[float]]:
    """Apply a metric function to each seed's records: {metric: [value per seed]}."""
    vals: dict[str, list[float]] = {}
    for seed in sorted(records):
        for k, v in fn(records[seed]).items():
            vals.setdefault(k, []).append(v)
    return vals


def train_variant(ctx: Any, name: str, seed: int, model: Any, train: Any, val: Any, *, loss: str,
                  loss_params: Mapping[str, Any], meta: Mapping[str, Any], **fit_kw: Any):
    """Fit (or resume, or load when finished) the model of one variant and seed into
    ``ctx.work/<name>-s<seed>``."""
    from ..train import fit

    return fit(model, train, loss=loss, loss_params=dict(loss_params), val_data=val,
               out=ctx.work / f"{name}-s{seed}", seed=seed, device=ctx.device, meta=dict(meta),
               desc=f"{name}-s{seed}", **fit_kw)


def progress_iter(ctx: Any, items: list, desc: str):
    if getattr(ctx, "progress", None) is not None:
        return ctx.progress(items, total=len(items), desc=desc)
    return items


@contextmanager
def small_model_threads(device: Any, n: int = 1):
    """One intra-op thread on CPU while training/attacking the tiny models of these stages:
    their operations are too small to gain from threads, and on a busy machine several
    spinning OpenMP threads per process slowed them down by two orders of magnitude
    (measured: 40 s instead of 0.4 s per gauss3 epoch). The previous count is restored."""
    if torch.device(device).type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)

"""Every reported metric, computed from per-sample records (boolean/int tensors or arrays).

Notation (paper Section 3, Appendix eq. for D^{r∧a} etc.):
  accurate  a = 1{F(x) = y}
  robust    r = 1{∀x' ∈ B_ε(x): F(x') = F(x)}  (eq. 2/3: robustness of the prediction,
              independent of the label)
The four parts robust-accurate (eq. 2), robust-inaccurate (eq. 3), non-robust-accurate
and non-robust-inaccurate are disjoint and sum to 1.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import InputError

PARTITION_KEYS = ("nat_acc", "rob_acc", "rob_inacc", "nonrob_acc", "nonrob_inacc")


def _np(a: Any, dtype=None) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    out = np.asarray(a)
    return out.astype(dtype) if dtype is not None else out


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {k: v.shape[0] for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise InputError(f"per-sample records have different lengths: {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise InputError("no samples: metrics need at least one record")
    return n


def _frac(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else 0.0


def partition(y: Any, nat_pred: Any, robust: Any) -> dict[str, float]:
    """The robustness–accuracy partition (paper Tables 1, 8, 9; eq. 2, 3).

    Returns fractions ``nat_acc`` (R_nat), ``rob_acc`` (R_rob^acc, eq. 2), ``rob_inacc``
    (R_rob^¬acc, eq. 3), ``nonrob_acc`` and ``nonrob_inacc``; the last four sum to 1.
    """
    y, pred, rob = _np(y, np.int64), _np(nat_pred, np.int64), _np(robust, bool)
    _same_length(y=y, nat_pred=pred, robust=rob)
    acc = pred == y
    return {
        "nat_acc": _frac(acc),
        "rob_acc": _frac(acc & rob),
        "rob_inacc": _frac(~acc & rob),
        "nonrob_acc": _frac(acc & ~rob),
        "nonrob_inacc": _frac(~acc & ~rob),
    }


def natural_accuracy(y: Any, nat_pred: Any) -> float:
    y, pred = _np(y, np.int64), _np(nat_pred, np.int64)
    _same_length(y=y, nat_pred=pred)
    return _frac(pred == y)


def abstain_metrics(y: Any, nat_pred: Any, selected: Any, robust_selected: Any,
                    robust_pred: Any) -> dict[str, float]:
    """Metrics of an abstain model (F, S) (Section 5, Section 7.2).

    selected         S(x) = 1 on the clean input.
    robust_selected  ∀x' ∈ B_ε(x): S(x') = 1 (eq. 14; for S_ERI this is robustness of F in
                     the 2ε ball).
    robust_pred      ∀x' ∈ B_ε(x): F(x') = F(x).

    ``coverage`` = mean S(x); ``rob_sel`` = R_rob^sel (eq. 14); ``sel_rob_acc`` =
    R_rob^acc of the abstain model: among robustly selected samples, the fraction that are
    accurate and robustly predicted (the ratio of non-abstained samples that are robust and
    accurate, Appendix A.9). Sound/conservative: a sample counts only if it is robustly
    selected *and* robustly, correctly predicted; 0 when nothing is selected.
    ``sel_nat_acc`` is the natural accuracy on the selected samples.
    """
    y, pred = _np(y, np.int64), _np(nat_pred, np.int64)
    sel, rsel, rpred = _np(selected, bool), _np(robust_selected, bool), _np(robust_pred, bool)
    _same_length(y=y, nat_pred=pred, selected=sel, robust_selected=rsel, robust_pred=rpred)
    # Robust selection implies selection of the clean input (x ∈ B_ε(x)).
    rsel = rsel & sel
    acc = pred == y
    good = rsel & acc & rpred
    n_rsel = int(rsel.sum())
    n_sel = int(sel.sum())
    return {
        "coverage": _frac(sel),
        "rob_sel": _frac(rsel),
        "sel_rob_acc": float(good.sum() / n_rsel) if n_rsel else 0.0,
        "sel_nat_acc": float((sel & acc).sum() / n_sel) if n_sel else 0.0,
        "rob_sel_acc_frac": _frac(good),
    }


def composition_metrics(y: Any, selected: Any, robust_selected: Any, pred_robust: Any,
                        robust_robust: Any, pred_core: Any, robust_core: Any,
                        core_selected_robustly: Any | None = None) -> dict[str, float]:
    """Natural and robust accuracy of the 2-compositional model H (eq. 15).

    H(x) = F_robust(x) if S(x) = 1 else F_core(x).
    A sample counts as robust-accurate (sound): either S robustly selects x (S(x') = 1 in
    the whole ball) and F_robust is robust and correct at x, or S robustly *abstains*
    (``core_selected_robustly``: S(x') = 0 in the whole ball) and F_core is robust and
    correct. When robust abstention is unknown (None), only the first case counts unless
    both models are robust and correct with the same prediction, which is sound whatever
    S does. The natural accuracy is exact.
    """
    y = _np(y, np.int64)
    sel, rsel = _np(selected, bool), _np(robust_selected, bool)
    pr, pc = _np(pred_robust, np.int64), _np(pred_core, np.int64)
    rr, rc = _np(robust_robust, bool), _np(robust_core, bool)
    _same_length(y=y, selected=sel, robust_selected=rsel, pred_robust=pr, robust_robust=rr,
                 pred_core=pc, robust_core=rc)
    h_pred = np.where(sel, pr, pc)
    case_robust = rsel & sel & rr & (pr == y)
    both_agree = rr & rc & (pr == y) & (pc == y)
    if core_selected_robustly is None:
        case_core = np.zeros_like(sel)
    else:
        rab = _np(core_selected_robustly, bool) & ~sel
        case_core = rab & rc & (pc == y)
    rob = case_robust | case_core | both_agree
    return {
        "nat_acc": _frac(h_pred == y),
        "rob_acc": _frac(rob),
        "coverage": _frac(sel),
    }


def mean_std(values: list[dict[str, float]]) -> dict[str, float]:
    """Aggregate per-seed metric dicts: ``m`` is the mean, ``m_std`` the std (ddof=0)
    when there is more than one seed."""
    if not values:
        return {}
    out: dict[str, float] = {}
    keys = [k for k in values[0] if all(k in v for v in values)]
    for k in keys:
        arr = np.asarray([v[k] for v in values], dtype=float)
        out[k] = float(arr.mean())
        if len(values) > 1:
            out[f"{k}_std"] = float(arr.std())
    return out

"""Every reported metric, computed from per-sample records (boolean/int tensors or arrays).

Notation (paper Section 3, Appendix eq. for D^{r∧a} etc.):
  accurate  a = 1{F(x) = y}
  robust    r = 1{∀x' ∈ B_ε(x): F(x') = F(x)}  (eq. 2/3: robustness of the prediction,
              independent of the label)
The four parts robust-accurate (eq. 2), robust-inaccurate (eq. 3), non-robust-accurate
and non-robust-inaccurate are disjoint and sum to 1.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .errors import InputError
from .utils import to_numpy

PARTITION_KEYS = ("nat_acc", "rob_acc", "rob_inacc", "nonrob_acc", "nonrob_inacc")


def _np(a: Any, dtype=None) -> np.ndarray:
    """``to_numpy`` that refuses NaN/Inf and fractional values for integer (class) columns."""
    out = to_numpy(a)
    if dtype is not None and np.issubdtype(np.dtype(dtype), np.integer) and out.dtype.kind in "fc":
        # class indices given as floats: refuse NaN/Inf and fractions instead of a silent cast
        if not np.isfinite(out).all():
            raise InputError("per-sample class indices contain NaN or Inf")
        if (out != np.round(out)).any():
            raise InputError("per-sample class indices must be integers, got fractional values")
    return out.astype(dtype) if dtype is not None else out


def _labels(y: Any) -> np.ndarray:
    out = _np(y, np.int64)
    if out.size and int(out.min()) < 0:
        raise InputError(f"labels must be >= 0, got {int(out.min())}")
    return out


def _same_length(**arrays: np.ndarray) -> int:
    shapes = {k: v.shape for k, v in arrays.items() if v.ndim != 1}
    if shapes:
        raise InputError(f"per-sample records must be 1-D columns, got shapes {shapes}")
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
    y, pred, rob = _labels(y), _np(nat_pred, np.int64), _np(robust, bool)
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


def cascade_outcome(y: Any, stages: Sequence[Mapping[str, Any]], core_pred: Any,
                    core_robust: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample prediction and sound robust accuracy of a cascade (eq. 15 generalised).

    A cascade is an ordered list of abstain models (F_i, S_i) ending in a core model:
    H(x) = F_i(x) for the first i with S_i(x) = 1, else F_core(x). The 2-compositional
    model of eq. 15 is the cascade with one stage. Each stage is a mapping with
    per-sample arrays

    ``pred``               F_i(x)
    ``robust``             ∀x' ∈ B_ε(x): F_i(x') = F_i(x)
    ``selected``           S_i(x)
    ``robust_selected``    ∀x' ∈ B_ε(x): S_i(x') = 1 (eq. 14; for S_ERI the 2ε check)
    ``robust_abstained``   optional, ∀x' ∈ B_ε(x): S_i(x') = 0 (certifiable e.g. for S_SN by
                           IBP; unknown, i.e. False, when absent)

    Soundness: walking the stages in order, the set P of models that H may use somewhere
    in B_ε(x) gains F_i unless S_i robustly abstains, and the walk stops at the first
    stage that robustly selects (later stages are never reached); if it never stops, P
    gains F_core. x counts as robust-accurate iff every model in P is robust at x and
    correct, because then H(x') ∈ {F(x') : F ∈ P} = {y} for all x' ∈ B_ε(x). Whenever the
    selector's decision can change in the ball and is not certified, both candidate
    models must be robust and correct (the conservative choice; the paper leaves it open).
    Returns ``(h_pred, robust_accurate)``.
    """
    y = _np(y, np.int64)
    pc, rc = _np(core_pred, np.int64), _np(core_robust, bool)
    _same_length(y=y, core_pred=pc, core_robust=rc)
    h_pred = pc.copy()
    decided = np.zeros(y.shape[0], bool)      # an earlier stage already chose on clean x
    reached = np.ones(y.shape[0], bool)       # the walk for the ball has not stopped yet
    ok = np.ones(y.shape[0], bool)            # every model in P so far is robust & correct
    for i, st in enumerate(stages):
        pr, rr = _np(st["pred"], np.int64), _np(st["robust"], bool)
        sel, rsel = _np(st["selected"], bool), _np(st["robust_selected"], bool)
        rab = st.get("robust_abstained")
        rab = np.zeros_like(sel) if rab is None else _np(rab, bool)
        _same_length(y=y, **{f"stage{i}.pred": pr, f"stage{i}.robust": rr,
                             f"stage{i}.selected": sel, f"stage{i}.robust_selected": rsel,
                             f"stage{i}.robust_abstained": rab})
        rsel = rsel & sel            # x ∈ B_ε(x): robust selection implies selection
        rab = rab & ~sel & ~rsel     # and robust abstention implies abstention
        h_pred = np.where(~decided & sel, pr, h_pred)
        decided |= sel
        in_p = reached & ~rab
        ok &= ~in_p | (rr & (pr == y))
        reached &= ~rsel
    ok &= ~reached | (rc & (pc == y))
    return h_pred, ok


def paper_robust_accurate(y: Any, stages: Sequence[Mapping[str, Any]], core_pred: Any,
                          core_robust: Any) -> np.ndarray:
    """The authors' (not sound) robust accuracy of a composition/cascade, for comparison only.

    As in the reference code of the paper (robust-abstain ``compositional_accuracy``):
    the first stage whose selector *robustly* selects x answers with its robust accuracy,
    otherwise the core does with its own, i.e.
    R_rob^sel·1{F_robust robust ∧ correct} + (1 − R_rob^sel)·1{F_core robust ∧ correct}
    per sample. It assumes that where S does not robustly select, S(x') = 0 in the whole
    ball, which nothing guarantees (an adversary may move x to where S selects and F_robust
    is wrong), so it can exceed the sound :func:`cascade_outcome`; it is never reported
    as the robust accuracy.
    """
    y = _np(y, np.int64)
    pc, rc = _np(core_pred, np.int64), _np(core_robust, bool)
    _same_length(y=y, core_pred=pc, core_robust=rc)
    out = rc & (pc == y)
    taken = np.zeros(y.shape[0], bool)
    for st in stages:
        rsel = _np(st["robust_selected"], bool) & _np(st["selected"], bool) & ~taken
        good = _np(st["robust"], bool) & (_np(st["pred"], np.int64) == y)
        out = np.where(rsel, good, out)
        taken |= rsel
    return out


def cascade_metrics(y: Any, stages: Sequence[Mapping[str, Any]], core_pred: Any,
                    core_robust: Any) -> dict[str, float]:
    """``nat_acc`` (exact), ``rob_acc`` (sound, see :func:`cascade_outcome`) and
    ``coverage`` (fraction of samples answered by some stage before the core) of a cascade."""
    h_pred, ok = cascade_outcome(y, stages, core_pred, core_robust)
    y = _np(y, np.int64)
    covered = np.zeros(y.shape[0], bool)
    for st in stages:
        covered |= _np(st["selected"], bool)
    return {"nat_acc": _frac(h_pred == y), "rob_acc": _frac(ok), "coverage": _frac(covered)}


def composition_metrics(y: Any, selected: Any, robust_selected: Any, pred_robust: Any,
                        robust_robust: Any, pred_core: Any, robust_core: Any,
                        core_selected_robustly: Any | None = None) -> dict[str, float]:
    """Natural and robust accuracy of the 2-compositional model H (eq. 15).

    H(x) = F_robust(x) if S(x) = 1 else F_core(x); the one-stage case of
    :func:`cascade_outcome`. A sample counts as robust-accurate (sound) iff
    (a) S robustly selects x (S(x') = 1 in the whole ball) and F_robust is robust and
    correct at x, or (b) S robustly *abstains* (``core_selected_robustly``: S(x') = 0 in the
    whole ball) and F_core is robust and correct, or (c) S's decision may change in the
    ball and both models are robust and correct (then H(x') = y whatever S does). When
    robust abstention is unknown (None) case (b) never applies. The natural accuracy is
    exact.
    """
    stage = {"pred": pred_robust, "robust": robust_robust, "selected": selected,
             "robust_selected": robust_selected, "robust_abstained": core_selected_robustly}
    return cascade_metrics(y, [stage], pred_core, robust_core)


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


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """The mean of the paired differences ``a[i] - b[i]`` (one pair per seed: both models
    fine-tuned from the same pre-trained weights on the same data order) and its two-sided
    95% Student-t confidence interval (n - 1 degrees of freedom; NaN for n < 2)."""
    from scipy.stats import ttest_rel  # noqa: PLC0415  heavy: scipy, paired tests only

    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.ndim != 1 or a_arr.size == 0 or a_arr.shape != b_arr.shape:
        raise InputError(f"paired differences need two equal-length, non-empty sequences, got {len(a)} and {len(b)}")
    n, mean = int(a_arr.size), float((a_arr - b_arr).mean())
    if n < 2:
        return {"mean": mean, "ci95_low": float("nan"), "ci95_high": float("nan"), "n": n}
    if np.all(a_arr - b_arr == (a_arr - b_arr)[0]):      # zero spread: the interval is the point
        return {"mean": mean, "ci95_low": mean, "ci95_high": mean, "n": n}
    ci = ttest_rel(a_arr, b_arr).confidence_interval(0.95)
    return {"mean": mean, "ci95_low": float(ci.low), "ci95_high": float(ci.high), "n": n}

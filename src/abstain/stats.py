"""Statistics for judging the paper's claims along fronts (science layer: numpy/scipy only).

The paper compares methods along Pareto fronts (Sec. 8; Fig. 2, 4, 7), not at one weight:

* :func:`lower_hull` / :func:`upper_hull` — the convex hulls of a method's points in the
  plane of Fig. 2 (robust accuracy x, robust inaccuracy y: lower hull, fewer robust errors is
  better) and Fig. 4 (natural accuracy x, sound robust accuracy of the composition y: upper
  hull, more is better);
* :func:`front_at` — such a hull read at an x level by linear interpolation (NaN outside the
  points' x range), :func:`common_range` — the x range every front covers;
* :func:`best_within` — the best y of the points whose x is at most ``loss`` below a reference
  (the composition budget of Sec. 7.3: natural-accuracy loss against the core);
* :func:`hierarchical_bootstrap` — the percentile bootstrap over pre-training seeds, with the
  fine-tunes of each resampled seed resampled within it;
* :func:`mcnemar_exact` — McNemar's exact paired test on per-point outcomes;
* :func:`holm` — Holm's step-down correction of a family of p-values.

All values are plain fractions or counts; nothing here reads files or prints.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def _points(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xa.ndim != 1 or xa.shape != ya.shape or xa.size == 0:
        raise ValueError(f"a front needs two equal-length, non-empty 1-D sequences, got {xa.shape} and {ya.shape}")
    if not (np.isfinite(xa).all() and np.isfinite(ya).all()):
        raise ValueError("a front's points must be finite")
    return xa, ya


def _hull(x: Sequence[float], y: Sequence[float], sign: float) -> tuple[np.ndarray, np.ndarray]:
    """Andrew's monotone chain: the lower (sign=+1) or upper (sign=-1) convex hull's vertices,
    x ascending; of points with equal x only the lowest (upper hull: highest) y is kept."""
    xa, ya = _points(x, y)
    order = np.lexsort((sign * ya, xa))
    hx: list[float] = []
    hy: list[float] = []
    for px, py in zip(xa[order], ya[order]):
        if hx and px == hx[-1]:
            continue                     # same x: the first (best) y was kept
        while len(hx) >= 2:
            cross = (hx[-1] - hx[-2]) * (py - hy[-2]) - (hy[-1] - hy[-2]) * (px - hx[-2])
            if sign * cross <= 0:        # the last vertex is not strictly convex: drop it
                hx.pop()
                hy.pop()
            else:
                break
        hx.append(float(px))
        hy.append(float(py))
    return np.asarray(hx), np.asarray(hy)


def lower_hull(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (x ascending) of the lower convex hull of the points (x_i, y_i): the front of
    Fig. 2 with x = robust accuracy and y = robust inaccuracy (lower is better)."""
    return _hull(x, y, 1.0)


def upper_hull(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (x ascending) of the upper convex hull of the points (x_i, y_i): the front of
    Fig. 4 with x = natural accuracy and y = sound robust accuracy of a composition."""
    return _hull(x, y, -1.0)


def front_at(x: Sequence[float], y: Sequence[float], level: float, hull: str = "lower") -> float:
    """The ``hull`` ("lower", "upper" or "none": the points themselves, x ascending) of the
    points read at x = ``level`` by linear interpolation between its neighbouring vertices;
    NaN when ``level`` lies outside [min x, max x] (no extrapolation)."""
    if hull == "lower":
        hx, hy = lower_hull(x, y)
    elif hull == "upper":
        hx, hy = upper_hull(x, y)
    elif hull == "none":
        xa, ya = _points(x, y)
        o = np.argsort(xa, kind="stable")
        hx, hy = xa[o], ya[o]
    else:
        raise ValueError(f"hull must be 'lower', 'upper' or 'none', got {hull!r}")
    if level < hx[0] or level > hx[-1]:
        return float("nan")
    return float(np.interp(level, hx, hy))


def common_range(fronts: Sequence[Sequence[float]]) -> tuple[float, float]:
    """The x interval covered by every front (given as its x values): (largest minimum,
    smallest maximum); empty (low > high) when the fronts do not overlap."""
    if not fronts:
        raise ValueError("common_range needs at least one front")
    return (float(max(np.min(f) for f in fronts)), float(min(np.max(f) for f in fronts)))


def best_within(x: Sequence[float], y: Sequence[float], ref_x: float, loss: float) -> float:
    """The largest y among the points with x ≥ ref_x − loss (e.g. the best sound robust
    accuracy of a method's compositions that lose at most ``loss`` natural accuracy against
    the core, Sec. 7.3); NaN when no point qualifies."""
    xa, ya = _points(x, y)
    ok = xa >= ref_x - loss - 1e-12          # fractions of the same test set: exact up to rounding
    return float(ya[ok].max()) if ok.any() else float("nan")


def hierarchical_bootstrap(groups: Sequence[Sequence[float]], n_boot: int = 2000, seed: int = 0,
                           level: float = 0.95,
                           statistic: Callable[[list[np.ndarray]], float] | None = None) -> dict[str, float]:
    """Percentile bootstrap of a two-level design: ``groups[i]`` holds the values of the
    fine-tunes of pre-training seed i. Each replicate draws len(groups) seeds with replacement
    and, within each drawn seed, its values with replacement; ``statistic`` (default: the mean
    over drawn seeds of their within-seed means) is computed on the drawn groups. Returns the
    statistic on the data (``mean``), the ``(1−level)/2`` and ``(1+level)/2`` percentiles of the
    replicates (``ci95_low``, ``ci95_high``), and ``n_groups``. NaN values are rejected."""
    gs = [np.asarray(g, dtype=float) for g in groups]
    if not gs or any(g.ndim != 1 or g.size == 0 for g in gs):
        raise ValueError("hierarchical_bootstrap needs non-empty groups of values")
    if any(not np.isfinite(g).all() for g in gs):
        raise ValueError("hierarchical_bootstrap got a non-finite value")
    stat = statistic or (lambda drawn: float(np.mean([d.mean() for d in drawn])))
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        drawn = [gs[i][rng.integers(0, gs[i].size, gs[i].size)] for i in rng.integers(0, len(gs), len(gs))]
        reps[b] = stat(drawn)
    lo, hi = np.percentile(reps, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return {"mean": float(stat(gs)), "ci95_low": float(lo), "ci95_high": float(hi), "n_groups": len(gs)}


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict[str, float]:
    """McNemar's exact test of two paired per-point outcomes (e.g. certified robust inaccuracy
    of two models on the same test points): with n01 = #(a ∧ ¬b) and n10 = #(¬a ∧ b), the
    two-sided p-value min(1, 2·P[Bin(n01 + n10, ½) ≤ min(n01, n10)]); 1 when no point differs."""
    from scipy.stats import binom  # noqa: PLC0415  heavy: scipy, this test only

    aa, bb = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if aa.shape != bb.shape or aa.ndim != 1:
        raise ValueError(f"McNemar's test needs two equal-length 1-D outcome vectors, got {aa.shape} and {bb.shape}")
    n01, n10 = int(np.sum(aa & ~bb)), int(np.sum(~aa & bb))
    n = n01 + n10
    p = 1.0 if n == 0 else float(min(1.0, 2.0 * binom.cdf(min(n01, n10), n, 0.5)))
    return {"p": p, "n01": n01, "n10": n10}


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> dict[str, list]:
    """Holm's step-down correction of m p-values: sorted ascending, p_(k) is multiplied by
    (m − k + 1), made non-decreasing and capped at 1 (``adjusted``, in the input order);
    ``reject`` marks the hypotheses rejected at family-wise level ``alpha`` (adjusted ≤ alpha)."""
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1 or ((p < 0) | (p > 1) | ~np.isfinite(p)).any():
        raise ValueError("holm needs finite p-values in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    adj_sorted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    adj = np.empty(m)
    adj[order] = adj_sorted
    return {"adjusted": [float(v) for v in adj], "reject": [bool(v <= alpha) for v in adj]}


__all__ = ["lower_hull", "upper_hull", "front_at", "common_range", "best_within",
           "hierarchical_bootstrap", "mcnemar_exact", "holm"]

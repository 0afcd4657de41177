"""abstain.stats against hand-computed cases: hulls, front interpolation, the composition
budget, the two-level bootstrap, McNemar's exact test and Holm's correction."""
from __future__ import annotations

import numpy as np
import pytest

from abstain import stats


def test_hulls_of_a_diamond_keep_the_lower_and_upper_vertices():
    x, y = [0, 1, 2, 1], [1, 0, 1, 2]
    hx, hy = stats.lower_hull(x, y)
    assert hx.tolist() == [0, 1, 2] and hy.tolist() == [1, 0, 1]
    hx, hy = stats.upper_hull(x, y)
    assert hx.tolist() == [0, 1, 2] and hy.tolist() == [1, 2, 1]


def test_hull_drops_collinear_and_dominated_points_of_equal_x():
    hx, hy = stats.lower_hull([0, 1, 2], [0, 1, 2])
    assert hx.tolist() == [0, 2] and hy.tolist() == [0, 2]          # the middle point is not a vertex
    assert stats.lower_hull([1, 1, 2], [3, 1, 2])[1].tolist() == [1, 2]
    assert stats.upper_hull([1, 1, 2], [3, 1, 2])[1].tolist() == [3, 2]
    # a point above the lower hull is not on it: (0.49, 0.05) lies above the chord
    hx, hy = stats.lower_hull([0.48, 0.50, 0.52, 0.49], [0.03, 0.01, 0.02, 0.05])
    assert hx.tolist() == [0.48, 0.50, 0.52] and hy.tolist() == [0.03, 0.01, 0.02]


def test_front_at_interpolates_the_hull_and_never_extrapolates():
    x, y = [0.48, 0.50, 0.52, 0.49], [0.03, 0.01, 0.02, 0.05]
    assert stats.front_at(x, y, 0.49) == pytest.approx(0.02)        # halfway from 0.03 to 0.01
    assert stats.front_at(x, y, 0.51) == pytest.approx(0.015)
    assert stats.front_at(x, y, 0.50) == pytest.approx(0.01)
    assert stats.front_at(x, y, 0.49, hull="none") == pytest.approx(0.05)   # the point itself
    assert np.isnan(stats.front_at(x, y, 0.47)) and np.isnan(stats.front_at(x, y, 0.53))
    assert stats.front_at([0, 1, 2, 1], [1, 0, 1, 2], 0.5, hull="upper") == pytest.approx(1.5)
    with pytest.raises(ValueError):
        stats.front_at(x, y, 0.5, hull="convex")
    with pytest.raises(ValueError):
        stats.lower_hull([0.1, float("nan")], [0.0, 0.0])


def test_common_range_and_best_within_budget():
    assert stats.common_range([[0.4, 0.6, 0.5], [0.45, 0.7]]) == (0.45, 0.6)
    lo, hi = stats.common_range([[0.1, 0.2], [0.3, 0.4]])
    assert lo > hi                                                  # no overlap
    x, y = [0.97, 0.965, 0.95], [0.30, 0.40, 0.50]
    assert stats.best_within(x, y, 0.975, 0.01) == pytest.approx(0.40)
    assert stats.best_within(x, y, 0.975, 0.005) == pytest.approx(0.30)
    assert np.isnan(stats.best_within(x, y, 0.975, 0.0))
    assert stats.best_within(x, y, 0.975, 0.025) == pytest.approx(0.50)


def test_bootstrap_resamples_seeds_and_the_fine_tunes_within_them():
    const = stats.hierarchical_bootstrap([[0.2, 0.2], [0.2]], n_boot=200)
    assert const["mean"] == pytest.approx(0.2) and const["ci95_low"] == const["ci95_high"] == pytest.approx(0.2)
    # two seeds with one fine-tune each: replicates are 0, 0.5, 1 with probability 1/4, 1/2, 1/4
    two = stats.hierarchical_bootstrap([[0.0], [1.0]], n_boot=2000, seed=1)
    assert two["mean"] == 0.5 and two["ci95_low"] == 0.0 and two["ci95_high"] == 1.0 and two["n_groups"] == 2
    # one seed, two fine-tunes: only the within-seed resampling can move the replicate mean
    inner = stats.hierarchical_bootstrap([[0.0, 1.0]], n_boot=2000, seed=2)
    assert inner["mean"] == 0.5 and inner["ci95_low"] == 0.0 and inner["ci95_high"] == 1.0
    again = stats.hierarchical_bootstrap([[0.0, 1.0]], n_boot=2000, seed=2)
    assert again == inner                                           # deterministic under a seed
    med = stats.hierarchical_bootstrap([[1.0, 2.0], [3.0]], n_boot=50,
                                       statistic=lambda g: float(np.median(np.concatenate(g))))
    assert med["mean"] == 2.0
    with pytest.raises(ValueError):
        stats.hierarchical_bootstrap([[0.1], []])


def test_mcnemar_exact_against_binomial_tails():
    a = np.array([True] * 5 + [False] * 5)
    b = np.zeros(10, dtype=bool)
    out = stats.mcnemar_exact(a, b)
    assert (out["n01"], out["n10"]) == (5, 0) and out["p"] == pytest.approx(2 / 32)
    # n01 = 2, n10 = 8: 2 * (1 + 10 + 45) / 1024; concordant pairs do not count
    a = np.array([True, True] + [False] * 8 + [True] * 3)
    b = np.array([False, False] + [True] * 8 + [True] * 3)
    assert stats.mcnemar_exact(a, b)["p"] == pytest.approx(112 / 1024)
    assert stats.mcnemar_exact(b, a)["p"] == pytest.approx(112 / 1024)          # symmetric
    assert stats.mcnemar_exact([True, False], [False, True])["p"] == 1.0          # capped at 1
    assert stats.mcnemar_exact([True, False], [True, False])["p"] == 1.0          # nothing differs
    with pytest.raises(ValueError):
        stats.mcnemar_exact([True], [True, False])


def test_holm_step_down_by_hand():
    out = stats.holm([0.01, 0.04, 0.03])
    # sorted 0.01, 0.03, 0.04 -> 0.03, 0.06, max(0.06, 0.04) = 0.06
    assert out["adjusted"] == pytest.approx([0.03, 0.06, 0.06]) and out["reject"] == [True, False, False]
    assert stats.holm([0.5, 0.001])["adjusted"] == pytest.approx([0.5, 0.002])
    assert stats.holm([0.6, 0.7])["adjusted"] == [1.0, 1.0]
    assert stats.holm([0.02], alpha=0.01)["reject"] == [False]
    with pytest.raises(ValueError):
        stats.holm([1.2])

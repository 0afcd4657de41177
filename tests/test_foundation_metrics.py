import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abstain import metrics
from abstain.errors import InputError

samples = st.integers(1, 60).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 4), min_size=n, max_size=n),
    st.lists(st.integers(0, 4), min_size=n, max_size=n),
    st.lists(st.booleans(), min_size=n, max_size=n),
))


@given(samples)
@settings(max_examples=200, deadline=None)
def test_partition_parts_sum_to_one_and_match_definitions(s):
    y, pred, rob = (np.asarray(a) for a in s)
    p = metrics.partition(y, pred, rob)
    assert set(p) == set(metrics.PARTITION_KEYS)
    total = p["rob_acc"] + p["rob_inacc"] + p["nonrob_acc"] + p["nonrob_inacc"]
    assert total == pytest.approx(1.0)
    assert p["nat_acc"] == pytest.approx(p["rob_acc"] + p["nonrob_acc"])
    assert p["rob_inacc"] == pytest.approx(np.mean((pred != y) & rob))
    if rob.all():
        assert p["nonrob_acc"] == 0 and p["nonrob_inacc"] == 0
    if not rob.any():
        assert p["rob_acc"] == 0 and p["rob_inacc"] == 0


@given(samples, st.lists(st.booleans(), min_size=60, max_size=60),
       st.lists(st.booleans(), min_size=60, max_size=60))
@settings(max_examples=200, deadline=None)
def test_abstain_metrics_bounds(s, sel, rsel):
    y, pred, rob = (np.asarray(a) for a in s)
    n = len(y)
    sel, rsel = np.asarray(sel[:n]), np.asarray(rsel[:n])
    m = metrics.abstain_metrics(y, pred, sel, rsel, rob)
    assert 0 <= m["rob_sel"] <= m["coverage"] <= 1  # robust selection never above selection
    assert 0 <= m["sel_rob_acc"] <= 1
    assert m["rob_sel_acc_frac"] <= m["rob_sel"] + 1e-12


@given(samples, st.lists(st.booleans(), min_size=60, max_size=60))
@settings(max_examples=150, deadline=None)
def test_composition_extremes(s, rob_core):
    y, pred, rob = (np.asarray(a) for a in s)
    n = len(y)
    rc = np.asarray(rob_core[:n])
    core_pred = (pred + 1) % 5
    ones, zeros = np.ones(n, bool), np.zeros(n, bool)
    # S = 1 everywhere (robustly): H = F_robust
    m1 = metrics.composition_metrics(y, ones, ones, pred, rob, core_pred, rc)
    assert m1["nat_acc"] == pytest.approx(np.mean(pred == y))
    assert m1["rob_acc"] >= np.mean((pred == y) & rob) - 1e-12
    # S = 0 everywhere (robustly abstaining): H = F_core
    m0 = metrics.composition_metrics(y, zeros, zeros, pred, rob, core_pred, rc, core_selected_robustly=ones)
    assert m0["nat_acc"] == pytest.approx(np.mean(core_pred == y))
    assert m0["rob_acc"] == pytest.approx(np.mean((core_pred == y) & rc))


def test_mean_std():
    out = metrics.mean_std([{"a": 0.5, "b": 1.0}, {"a": 0.7, "b": 1.0}])
    assert out["a"] == pytest.approx(0.6) and out["a_std"] == pytest.approx(0.1)
    assert out["b_std"] == 0


def test_length_mismatch_and_empty():
    with pytest.raises(InputError, match="different lengths"):
        metrics.partition([0, 1], [0], [True, False])
    with pytest.raises(InputError, match="no samples"):
        metrics.partition([], [], [])

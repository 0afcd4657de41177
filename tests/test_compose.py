"""2-compositional models (eq. 15) and cascades: extremes S ≡ 1 / S ≡ 0, the module agrees
with the records, sound robust accuracy against an explicit finite-ball oracle, cascade
choice respects the budget."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from abstain.composition import (Candidate, Cascade, Composition, choose_cascade, composition_columns,
                             crossfit_cascade, pareto_front)
from abstain.errors import InputError
from abstain.metrics import cascade_metrics, cascade_outcome, composition_metrics, paper_robust_accurate
from abstain.records import column as col
from abstain.selectors import Decisions, RobustnessIndicator, Selector
from abstain_fixtures import EPS, digits_models


class Constant(Selector):
    """S ≡ value (trivially robust either way)."""

    name = "const"

    def __init__(self, model, value: bool) -> None:
        super().__init__(model, eps=EPS)
        self.value = value

    def select(self, x):
        return torch.full((x.shape[0],), self.value, dtype=torch.bool)

    def robust_select(self, x, eps=None, norm=None):
        return self.select(x)

    def records(self, x):
        return {"const": self.select(x)}

    @classmethod
    def decisions(cls, records: Mapping[str, Any], eps: float, tau=None) -> Decisions:
        s = np.asarray(records["const"], bool)
        return Decisions(s, s, ~s)


@pytest.fixture(scope="module")
def models_and_data():
    _, test, robust, core = digits_models()
    return test.x[:150], test.y[:150], robust, core


def test_composition_extremes_equal_the_models(models_and_data) -> None:
    x, y, robust, core = models_and_data
    with torch.no_grad():
        lr, lc = robust(x), core(x)
    assert not torch.equal(lr.argmax(1), lc.argmax(1))  # the two models differ somewhere
    h1 = Composition(robust, core, Constant(robust, True))
    h0 = Composition(robust, core, Constant(robust, False))
    assert torch.equal(h1(x), lr) and torch.equal(h0(x), lc)
    # and the metrics from records: S ≡ 1 gives F_robust's numbers, S ≡ 0 F_core's
    pr, pc = lr.argmax(1).numpy(), lc.argmax(1).numpy()
    rr = np.random.default_rng(0).random(x.shape[0]) < 0.6
    rc = np.random.default_rng(1).random(x.shape[0]) < 0.3
    ones, zeros = np.ones(x.shape[0], bool), np.zeros(x.shape[0], bool)
    m1 = composition_metrics(y, ones, ones, pr, rr, pc, rc)
    m0 = composition_metrics(y, zeros, zeros, pr, rr, pc, rc, core_selected_robustly=ones)
    yn = y.numpy()
    assert m1["nat_acc"] == pytest.approx(np.mean(pr == yn)) and m1["rob_acc"] == pytest.approx(np.mean((pr == yn) & rr))
    assert m0["nat_acc"] == pytest.approx(np.mean(pc == yn)) and m0["rob_acc"] == pytest.approx(np.mean((pc == yn) & rc))


def test_composed_module_matches_records(models_and_data) -> None:
    x, y, robust, core = models_and_data
    eri = RobustnessIndicator(robust, eps=EPS, steps=20, seed=4)
    h = Composition(robust, core, eri)
    live = h.predict(x)
    rec = eri.records(x)
    with torch.no_grad():
        core_pred = core(x).argmax(1)
    cand = Candidate("eri", rec["pred"].numpy(), rec[col("robust", EPS)].numpy(),
                     RobustnessIndicator.decisions(rec, EPS))
    cols = composition_columns(y, cand, core_pred.numpy(), np.zeros(x.shape[0], bool))
    assert np.array_equal(cols["h_pred"], live.numpy())
    sel = rec[col("robust", EPS)]
    assert sel.any() and (~sel).any()
    assert torch.equal(live[sel], rec["pred"][sel]) and torch.equal(live[~sel], core_pred[~sel])
    # a cascade of one stage is the same module
    assert torch.equal(Cascade([(robust, eri)], core).predict(x), live)


def _world(rng: np.random.Generator, n: int, m: int, k: int, classes: int):
    """Finite 'balls': m points per sample (point 0 = x), per-point selector outputs and
    predictions of k stages and the core; returns the ground truth and derived records."""
    y = rng.integers(0, classes, n)
    sel = rng.random((k, n, m)) < rng.uniform(0.2, 0.9)
    # correlate: some samples have constant selector decisions in the whole ball
    const = rng.random((k, n)) < 0.5
    sel = np.where(const[..., None], sel[..., :1], sel)
    preds = rng.integers(0, classes, (k + 1, n, m))
    stable = rng.random((k + 1, n)) < 0.6
    preds = np.where(stable[..., None], preds[..., :1], preds)
    preds = np.where(rng.random((k + 1, n, 1)) < 0.5, y[None, :, None], preds)  # often correct
    # ground truth: H at every point of the ball
    h = preds[k].copy()
    chosen = np.zeros((n, m), bool)
    for i in range(k):
        take = sel[i] & ~chosen
        h = np.where(take, preds[i], h)
        chosen |= sel[i]
    truth = (h == y[:, None]).all(axis=1)
    stages = []
    for i in range(k):
        hide = rng.random() < 0.5
        stages.append({"pred": preds[i, :, 0], "robust": (preds[i] == preds[i, :, :1]).all(1),
                       "selected": sel[i, :, 0], "robust_selected": sel[i].all(1),
                       "robust_abstained": None if hide else (~sel[i]).all(1)})
    core_rob = (preds[k] == preds[k, :, :1]).all(1)
    return y, stages, preds[k, :, 0], core_rob, h[:, 0], truth


@given(st.integers(0, 10_000), st.integers(1, 3))
@settings(max_examples=60, deadline=None)
def test_cascade_robust_accuracy_is_sound_against_finite_ball_oracle(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    y, stages, pc, rc, h0, truth = _world(rng, 80, 6, k, 3)
    h_pred, ok = cascade_outcome(y, stages, pc, rc)
    assert np.array_equal(h_pred, h0)            # natural prediction is exact
    assert not (ok & ~truth).any()               # never claims robustness that is not there
    paper = paper_robust_accurate(y, stages, pc, rc)
    assert not (ok & ~paper).any()               # the authors' count is never below the sound one
    if all(s["robust_abstained"] is not None for s in stages):
        # with every abstention known, the only losses are from unstable selectors
        certain = np.ones_like(ok)
        for s in stages:
            certain &= s["robust_selected"] | s["robust_abstained"]
        assert np.array_equal(ok[certain], truth[certain])


def test_choose_cascade_respects_budget_and_beats_two_compositions() -> None:
    rng = np.random.default_rng(3)
    y, stages, pc, rc, _, _ = _world(rng, 300, 5, 4, 3)
    cands = [Candidate(f"c{i}", s["pred"], s["robust"],
                       Decisions(s["selected"], s["robust_selected"], s["robust_abstained"]))
             for i, s in enumerate(stages)]
    core_nat = float(np.mean(pc == y))
    for budget in (0.0, 0.02, 0.05, 0.2, 1.0):
        names, m = choose_cascade(y, cands, pc, rc, budget=budget, max_len=3)
        assert m["nat_acc"] >= core_nat - budget - 1e-12
        chosen = [next(c for c in cands if c.name == nm) for nm in names]
        if names:
            assert m == cascade_metrics(y, [c.stage() for c in chosen], pc, rc)
        two = [cascade_metrics(y, [c.stage()], pc, rc) for c in cands]
        fits = [t["rob_acc"] for t in two if t["nat_acc"] >= core_nat - budget - 1e-12]
        assert m["rob_acc"] >= max(fits + [float(np.mean((pc == y) & rc))]) - 1e-12
    with pytest.raises(InputError, match="budget"):
        choose_cascade(y, cands, pc, rc, budget=-0.1)
    out = crossfit_cascade(y, cands, pc, rc, budget=0.05, seed=1)
    assert out["h_pred"].shape == y.shape and len(out["chosen"]) == 2
    assert set(np.unique(out["fold"])) == {0, 1}


def test_pareto_front() -> None:
    pts = [(0.9, 0.1), (0.8, 0.5), (0.7, 0.4), (0.9, 0.1), (0.5, 0.9)]
    assert pareto_front(pts) == [0, 1, 3, 4]

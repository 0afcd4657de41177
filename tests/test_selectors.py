"""Selectors: S_ERI = is_robust, robust selection ⊆ selection, SR under APGD vs APGDconf,
S_SN certified by IBP, S_CRI from smoothing, records reproduce the live decisions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from abstain.attacks import is_robust
from abstain.errors import InputError
from abstain.ibp import input_box
from abstain.records import column as col
from abstain.selectors import (CertifiedRobustnessIndicator, RobustnessIndicator, SelectionNetwork,
                               SoftmaxResponse, selection_net, selection_targets,
                               train_selection_network)
from abstain_fixtures import EPS, digits_models

N_TEST = 200


@pytest.fixture(scope="module")
def setup():
    train, test, robust, core = digits_models()
    idx = torch.arange(N_TEST)
    return train, test.x[idx], test.y[idx], robust, core


@pytest.fixture(scope="module")
def sr_records(setup):
    _, x, _, robust, _ = setup
    sr = SoftmaxResponse(robust, tau=0.5, eps=EPS, steps=20, seed=3)
    return sr, sr.records(x)


def test_eri_selection_equals_is_robust(setup) -> None:
    _, x, y, robust, _ = setup
    eri = RobustnessIndicator(robust, eps=EPS, steps=20, seed=0)
    ref = is_robust(robust, x, eps=EPS, steps=20, generator=torch.Generator().manual_seed(0))
    sel = eri.select(x)
    assert torch.equal(sel, ref)
    assert 0 < int(sel.sum()) < x.shape[0]  # a real mix, not a degenerate model
    rec = eri.records(x)
    assert torch.equal(rec[col("robust", EPS)], ref)
    assert torch.equal(rec["pred"], robust(x).argmax(1))


def test_eri_robust_selection_never_above_selection(setup) -> None:
    _, x, y, robust, _ = setup
    eri = RobustnessIndicator(robust, eps=EPS, steps=20, seed=1)
    sel, rsel = eri.select(x), eri.robust_select(x)
    assert not bool((rsel & ~sel).any())          # per sample: robustly selected ⇒ selected
    assert int(rsel.sum()) < int(sel.sum())       # the 2ε check removes samples here
    # robust selection is robustness in the 2ε ball, attacked on the selected samples
    ref2 = is_robust(robust, x, eps=2 * EPS, steps=20, generator=torch.Generator().manual_seed(1000003))
    assert torch.equal(rsel, sel & ref2)
    rec = eri.records(x)
    d = RobustnessIndicator.decisions(rec, EPS)
    assert np.array_equal(d.selected, sel.numpy()) and np.array_equal(d.robust_selected, rsel.numpy())
    m = RobustnessIndicator.metrics(rec, y, EPS)
    assert m["rob_sel"] <= m["coverage"]
    assert m["rob_sel"] == pytest.approx(float(rsel.float().mean()))


def test_sr_apgdconf_finds_at_least_as_many_wrongly_selected(sr_records) -> None:
    sr, rec = sr_records
    counts = {a: [int(sr.wrongly_selected(rec, EPS, t, a).sum()) for t in (0.5, 0.6, 0.7, 0.8)]
              for a in ("apgd", "conf")}
    # APGD minimising the confidence lands its flips at low confidence; APGDconf (eq. 21)
    # maximises the best other class's probability, so its flips are kept by S_SR.
    assert all(c >= a for c, a in zip(counts["conf"], counts["apgd"])), counts
    assert counts["conf"][0] > counts["apgd"][0], counts
    # and robust selection measured with APGDconf alone can only be ≤ with both attacks
    for tau in (0.3, 0.6, 0.9):
        both = SoftmaxResponse.decisions_for(rec, EPS, tau, ("apgd", "conf"))
        only = SoftmaxResponse.decisions_for(rec, EPS, tau, ("conf",))
        assert (both.robust_selected <= only.robust_selected).all()


def test_sr_records_reproduce_live_decisions(setup, sr_records) -> None:
    _, x, y, _, _ = setup
    sr, rec = sr_records
    d = SoftmaxResponse.decisions(rec, EPS, sr.tau)
    assert np.array_equal(d.selected, sr.select(x).numpy())
    assert np.array_equal(d.robust_selected, sr.robust_select(x).numpy())
    assert not (d.robust_selected & ~d.selected).any()
    # the minimum max-softmax found never exceeds the clean confidence, and the 2ε minimum
    # is taken over a larger ball
    assert (rec[col("score", EPS)] <= rec["conf"] + 1e-7).all()
    # monotone in τ: robust selection shrinks as τ grows
    rs = [SoftmaxResponse.metrics(rec, y, EPS, t)["rob_sel"] for t in (0.0, 0.3, 0.6, 0.9, 0.99)]
    assert rs == sorted(rs, reverse=True) and rs[0] == 1.0


def test_sn_robust_selection_is_certified(setup) -> None:
    train, x, y, robust, _ = setup
    g = torch.Generator().manual_seed(0)
    tr_idx = torch.randperm(train.x.shape[0], generator=g)[:600]
    t = selection_targets(robust, train.x[tr_idx], train.y[tr_idx], eps=EPS, steps=10)
    net = selection_net((1, 8, 8), hidden=64)
    train_selection_network(net, train.x[tr_idx], t, eps=EPS, epochs=15)
    sn = SelectionNetwork(robust, net, tau=0.5, eps=EPS, steps=10)
    rec = sn.records(x)
    d = SelectionNetwork.decisions(rec, EPS, 0.5)
    assert d.robust_abstained is not None
    assert not (d.robust_selected & ~d.selected).any() and not (d.robust_abstained & d.selected).any()
    assert np.array_equal(d.robust_selected, sn.robust_select(x).numpy())
    # soundness against sampling: certified samples keep σ(s(x')) ≥ τ on sampled x' of the box
    lo, hi = input_box(x, EPS)
    pts = lo + torch.rand((64,) + tuple(x.shape), generator=g) * (hi - lo)
    with torch.no_grad():
        s = torch.sigmoid(net(pts.reshape(-1, *x.shape[1:]))).reshape(64, -1)
    cert = torch.from_numpy(d.robust_selected)
    assert (s[:, cert] >= 0.5).all()
    assert (s[:, torch.from_numpy(d.robust_abstained)] < 0.5).all()
    assert (torch.from_numpy(rec[col("score_lo", EPS)].numpy() if isinstance(rec[col("score_lo", EPS)], torch.Tensor) else rec[col("score_lo", EPS)]) <= rec["score"] + 1e-7).all()
    # the selector learned something: selected samples are more often robust-accurate
    good = (rec["pred"] == y) & rec[col("robust", EPS)]
    sel = torch.from_numpy(d.selected)
    assert sel.any() and good[sel].float().mean() >= good.float().mean()


def test_cri_from_smoothing(setup) -> None:
    _, x, y, robust, _ = setup
    xs = x[:40]
    cri = CertifiedRobustnessIndicator(robust, num_classes=10, sigma=0.12, eps=0.1, n0=20, n=200,
                                       alpha=0.01, batch_size=400, seed=0)
    rec = cri.records(xs)
    d = CertifiedRobustnessIndicator.decisions(rec, 0.1)
    assert np.array_equal(d.selected, cri.select(xs).numpy())
    assert np.array_equal(d.robust_selected, cri.robust_select(xs).numpy())
    rad = rec["radius"].numpy()
    assert np.array_equal(d.robust_selected, (rec["pred"].numpy() >= 0) & (rad >= 0.2))
    paper = CertifiedRobustnessIndicator.decisions(rec, 0.1, paper_note=True)
    assert (d.robust_selected <= paper.robust_selected).all()   # sound ⊆ paper's note
    assert np.array_equal(paper.robust_selected, paper.selected)
    with pytest.raises(InputError, match="l2"):
        CertifiedRobustnessIndicator(robust, num_classes=10, sigma=0.1, eps=0.1, norm="linf")


def test_bad_arguments(setup) -> None:
    _, x, _, robust, _ = setup
    with pytest.raises(InputError, match="tau"):
        SoftmaxResponse(robust, tau=1.5, eps=EPS)
    with pytest.raises(InputError, match="norm"):
        RobustnessIndicator(robust, eps=EPS).robust_select(x[:2], norm="l2")
    with pytest.raises(InputError, match="eps"):
        RobustnessIndicator(robust, eps=-1.0)
    with pytest.raises(InputError, match="attack"):
        SoftmaxResponse(robust, eps=EPS, attacks=("fgsm",))
    with pytest.raises(InputError, match="lack"):
        RobustnessIndicator.decisions({"pred": np.zeros(3)}, EPS)

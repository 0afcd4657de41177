"""Sequential certification (abstain.smoothing.certify_sequential): validity at α against a
classifier with closed-form p_A, agreement of its bounds with independently computed
Clopper–Pearson bounds, early stopping, the plain-certify mode and bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import beta, binomtest, norm

from abstain.errors import InputError
from abstain.smoothing import ABSTAIN, Smooth, certify_sequential, look_schedule
from smoothing_helpers import ThresholdModel, threshold_inputs

SIGMA = 0.25
ALPHA = 0.05
T = 0.8
EPS = (0.1, 0.2)


@pytest.fixture(scope="module")
def sequential_run():
    """1500 independent sequential certifications (n_max = 4000, α = 0.05) at inputs whose
    true radii spread over [0.02, 0.35], i.e. around both asked radii."""
    g = torch.Generator().manual_seed(11)
    x0 = torch.empty(1500, dtype=torch.float64).uniform_(T - 0.35, T - 0.02, generator=g)
    smooth = Smooth(ThresholdModel(T), 2, SIGMA)
    res = certify_sequential(smooth, threshold_inputs(x0), EPS, n0=10, n_max=4000, alpha=ALPHA,
                             batch_size=8192, generator=g)
    return x0, res


def test_sequential_is_valid_at_alpha(sequential_run):
    x0, res = sequential_run
    true_r = (T - x0).numpy()
    pred, radius, dec = res.pred.numpy(), res.radius.numpy(), res.decisions.numpy()
    # a violation: a certificate (radius or an ε decision) that the true radius does not back
    wrong_radius = (pred != ABSTAIN) & ((pred != 0) | (radius > true_r))
    wrong_eps = (dec & (true_r[:, None] < np.asarray(EPS)[None, :])).any(1)
    wrong = wrong_radius | wrong_eps
    k = int(wrong.sum())
    p = binomtest(k, len(wrong), ALPHA, alternative="greater").pvalue
    print(f"sequential: {k}/{len(wrong)} inputs with a certificate above the true radius "
          f"(rate {k / len(wrong):.4f}, alpha {ALPHA}), p={p:.3g}; mean samples "
          f"{res.samples.double().mean():.0f} of {10 + 4000}")
    assert p > 1e-3
    # it does decide: most inputs whose true radius clears ε by a margin are certified
    assert dec[:, 0][true_r > 0.16].mean() > 0.9
    # and it stops early on easy inputs
    assert res.samples.double().mean() < 0.5 * 4010


def test_decisions_are_radius_at_least_eps(sequential_run):
    _, res = sequential_run
    expect = (res.pred != ABSTAIN)[:, None] & (res.radius[:, None] >= torch.tensor(EPS, dtype=torch.float64))
    assert torch.equal(res.decisions, expect)
    # stopping: a finished input either settled every ε or used the whole budget
    assert ((res.n == 4000) | (res.looks < len(res.schedule))).all()


def test_bound_at_first_look_matches_independent_clopper_pearson(sequential_run):
    _, res = sequential_run
    k_looks = len(res.schedule)
    assert res.alpha_look == pytest.approx(ALPHA / k_looks)
    first = (res.looks == 1).numpy()
    assert first.sum() > 10
    n1 = res.schedule[0]
    k = res.count.numpy()[first]
    low = beta.ppf(ALPHA / k_looks, k, n1 - k + 1)          # written out in the test
    ok = low >= 0.5
    np.testing.assert_allclose(res.radius.numpy()[first][ok], SIGMA * norm.ppf(low[ok]), rtol=1e-9)
    # the first look is just large enough for an all-hit look to certify the smallest ε
    assert SIGMA * norm.ppf((ALPHA / k_looks) ** (1 / n1)) >= EPS[0]
    assert SIGMA * norm.ppf((ALPHA / k_looks) ** (1 / (n1 - 1))) < EPS[0]


def test_schedule():
    assert look_schedule(10, 100) == (10, 20, 40, 80, 100)
    assert look_schedule(200, 100) == (100,)
    assert look_schedule(1, 5, 1.5) == (1, 2, 3, 5)
    with pytest.raises(InputError, match="growth"):
        look_schedule(10, 100, 1.0)


def test_plain_mode_and_determinism():
    smooth = Smooth(ThresholdModel(T), 2, SIGMA)
    x = threshold_inputs(torch.tensor([0.3, 0.6, 0.79], dtype=torch.float64))
    a = certify_sequential(smooth, x, (), n0=20, n_max=20000, alpha=0.01, batch_size=4096,
                           generator=torch.Generator().manual_seed(5), radius_tol=0.05)
    b = certify_sequential(smooth, x, (), n0=20, n_max=20000, alpha=0.01, batch_size=4096,
                           generator=torch.Generator().manual_seed(5), radius_tol=0.05)
    assert torch.equal(a.radius, b.radius) and torch.equal(a.samples, b.samples)
    assert a.decisions.shape == (3, 0)
    assert a.pred[0] == 0 and 0.3 < float(a.radius[0]) <= 0.5
    assert int(a.n[0]) < 20000                                 # stopped once precise enough


def test_bad_input_and_warnings():
    smooth = Smooth(ThresholdModel(T), 2, SIGMA)
    x = threshold_inputs(torch.tensor([0.5], dtype=torch.float64))
    with pytest.raises(InputError, match="eps"):
        certify_sequential(smooth, x, (), n0=10, n_max=100, alpha=0.01, batch_size=32)
    with pytest.raises(InputError, match="eps"):
        certify_sequential(smooth, x, (-0.1,), n0=10, n_max=100, alpha=0.01, batch_size=32)
    with pytest.raises(InputError, match="alpha"):
        certify_sequential(smooth, x, (0.1,), n0=10, n_max=100, alpha=1.0, batch_size=32)
    with pytest.raises(InputError, match="n_max"):
        certify_sequential(smooth, x, (0.1,), n0=10, n_max=0, alpha=0.1, batch_size=32)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        certify_sequential(smooth, x + 2, (0.1,), n0=10, n_max=100, alpha=0.1, batch_size=32)
    with pytest.warns(UserWarning, match="eps=2"):
        res = certify_sequential(smooth, x, (2.0,), n0=10, n_max=100, alpha=0.01, batch_size=32)
    assert not res.decisions.any()
    assert int(res.looks[0]) == 1                             # out of reach: settled at once

"""Randomized smoothing (abstain.smoothing.Smooth): statistical validity of CERTIFY against a
classifier with closed-form p_A, radii equal to an independently computed Clopper–Pearson bound,
PREDICT's abstention, determinism, fresh noise and bad input."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import binomtest, norm

from abstain.errors import InputError
from abstain.smoothing import ABSTAIN, Smooth, max_certifiable_radius
from smoothing_helpers import ThresholdModel, threshold_inputs

SIGMA = 0.25
ALPHA = 0.05
T = 0.8


def _true_radius(x0: torch.Tensor) -> np.ndarray:
    return (T - x0).double().numpy()          # = σ Φ⁻¹(Φ((t − x0)/σ))


def _independent_radius(k: np.ndarray, n: int, alpha: float, sigma: float) -> np.ndarray:
    """σ Φ⁻¹ of the one-sided Clopper–Pearson lower bound, via scipy's binomtest CI."""
    out = np.full(k.shape, np.nan)
    for v in np.unique(k):
        low = binomtest(int(v), n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
        out[k == v] = sigma * norm.ppf(low) if low >= 0.5 else np.nan
    return out


@pytest.fixture(scope="module")
def many_certifications():
    """2000 independent certifications (n0 = 10, n = 100, α = 0.05) at inputs whose true
    radii spread over [0.02, 0.5]."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.empty(2000, dtype=torch.float64).uniform_(T - 0.5, T - 0.02, generator=g)
    smooth = Smooth(ThresholdModel(T), 2, SIGMA)
    res = smooth.certify_batch(threshold_inputs(x0), 10, 100, ALPHA, 4096, g, details=True)
    return x0, res


def test_certify_is_valid_at_alpha(many_certifications):
    x0, res = many_certifications
    true_r = _true_radius(x0)
    pred, radius = res.pred.numpy(), res.radius.numpy()
    wrong = (pred != ABSTAIN) & ((pred != 0) | (radius > true_r))
    k = int(wrong.sum())
    p = binomtest(k, len(wrong), ALPHA, alternative="greater").pvalue
    print(f"certify: {k}/{len(wrong)} radii above the true radius (rate {k / len(wrong):.4f}, alpha {ALPHA}), p={p:.3g}")
    assert p > 1e-3, f"{k}/{len(wrong)} certificates exceed the true radius: not valid at alpha={ALPHA}"
    assert (pred != ABSTAIN).mean() > 0.5  # the test certifies most inputs (it has something to check)


def test_point_estimate_would_fail_the_validity_test(many_certifications):
    """The same test rejects the point-estimate 'bound' n_A / n (PITFALLS): it has power."""
    x0, res = many_certifications
    phat = res.count.numpy() / res.n.numpy()
    r = SIGMA * norm.ppf(np.clip(phat, 1e-12, 1 - 1e-12))
    wrong = (phat >= 0.5) & (r > _true_radius(x0))
    assert binomtest(int(wrong.sum()), len(wrong), ALPHA, alternative="greater").pvalue < 1e-6


def test_radii_equal_independent_clopper_pearson(many_certifications):
    _, res = many_certifications
    k = res.count.numpy()
    ref = _independent_radius(k, 100, ALPHA, SIGMA)
    certified = res.pred.numpy() != ABSTAIN
    assert np.array_equal(certified, ~np.isnan(ref))
    np.testing.assert_allclose(res.radius.numpy()[certified], ref[certified], rtol=1e-9, atol=1e-12)
    assert (res.radius.numpy()[~certified] == 0).all()
    # the class is c_A from the selection samples; n_A counts c_A among the n estimation samples
    assert (res.n.numpy() == 100).all() and (res.n0.numpy() == 10).all() and (res.samples.numpy() == 110).all()


def test_single_certify_matches_batch_and_is_deterministic():
    smooth = Smooth(ThresholdModel(T), 2, SIGMA)
    x = threshold_inputs(torch.tensor([0.6], dtype=torch.float64))[0]
    a = smooth.certify(x, 20, 500, 0.01, 128, torch.Generator().manual_seed(7))
    b = smooth.certify(x, 20, 500, 0.01, 128, torch.Generator().manual_seed(7))
    cls, rad = smooth.certify_batch(x[None], 20, 500, 0.01, 128, torch.Generator().manual_seed(7))
    assert a == b == (int(cls[0]), float(rad[0]))
    assert a[0] == 0 and 0 < a[1] < T - 0.6


def test_noise_is_fresh_per_call_and_sample():
    model = ThresholdModel(T)
    smooth = Smooth(model, 2, SIGMA)
    x = threshold_inputs(torch.tensor([0.8, 0.8], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    model.record = True
    c1 = smooth.sample_counts(x, 300, 64, g)
    c2 = smooth.sample_counts(x, 300, 64, g)
    model.record = False
    seen = torch.cat(model.seen)
    assert seen.shape[0] == 1200
    noise = seen.flatten(1)[:, 0] - 0.8
    assert torch.unique(noise).numel() == 1200               # every sample has its own draw
    assert abs(float(noise.std()) - SIGMA) < 0.02
    assert not torch.equal(c1, c2)                            # a second call draws new noise
    assert int(c1.sum()) == 600 and c1.shape == (2, 2)


def test_memory_independent_of_n_batches_of_batch_size():
    model = ThresholdModel(T)
    smooth = Smooth(model, 2, SIGMA)
    model.record = True
    smooth.sample_counts(threshold_inputs(torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)), 1000, 256)
    model.record = False
    assert max(s.shape[0] for s in model.seen) == 256 and sum(s.shape[0] for s in model.seen) == 3000


def test_counts_exact_for_a_constant_classifier_any_shape():
    class Const(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 5)
            out[:, 3] = 1
            return out
    smooth = Smooth(Const(), 5, 0.5)
    for shape in [(7,), (3, 4, 4), (2, 1, 3, 3)]:
        counts = smooth.sample_counts(torch.rand(4, *shape), 77, 50)
        assert counts[:, 3].tolist() == [77] * 4 and int(counts.sum()) == 308
    cls, rad = smooth.certify(torch.rand(3, 4, 4), 10, 1000, 0.001, 100)
    assert cls == 3
    assert rad == pytest.approx(0.5 * norm.ppf(0.001 ** (1 / 1000)), rel=1e-9)
    assert rad == pytest.approx(max_certifiable_radius(1000, 0.001, 0.5), rel=1e-12)


class _Alternating(torch.nn.Module):
    """Predicts class (row index mod 2): exactly half the votes each for even batch sizes."""

    def forward(self, x):
        parity = torch.arange(x.shape[0]) % 2
        return torch.nn.functional.one_hot(parity, 3).float()


def test_predict_abstains_on_a_tie_and_returns_a_clear_majority():
    smooth = Smooth(_Alternating(), 3, 0.25)
    assert smooth.predict(torch.rand(4), 1000, 0.05, 100) == ABSTAIN
    smooth = Smooth(ThresholdModel(T), 2, SIGMA)
    x = threshold_inputs(torch.tensor([0.2], dtype=torch.float64))[0]
    assert smooth.predict(x, 200, 0.001, 64, torch.Generator().manual_seed(0)) == 0
    # at p_A = 1/2 (x0 = t) predict commits to a class rarely (two-sided test at alpha)
    x = threshold_inputs(torch.tensor([T], dtype=torch.float64))[0]
    g = torch.Generator().manual_seed(3)
    committed = sum(smooth.predict(x, 100, 0.05, 100, g) != ABSTAIN for _ in range(200))
    assert binomtest(committed, 200, 0.05, alternative="greater").pvalue > 1e-3


@pytest.mark.parametrize("kw, msg", [
    ({"sigma": 0.0}, "sigma"), ({"sigma": -1.0}, "sigma"), ({"sigma": float("nan")}, "sigma"),
    ({"alpha": 0.0}, "alpha"), ({"alpha": 1.0}, "alpha"), ({"alpha": 1.5}, "alpha"),
    ({"n0": 0}, "n0"), ({"n": 0}, "n"), ({"n": 2.5}, "n"),
])
def test_bad_arguments(kw, msg):
    args = {"sigma": 0.25, "alpha": 0.01, "n0": 10, "n": 100, **kw}
    with pytest.raises(InputError, match=msg):
        Smooth(ThresholdModel(T), 2, args["sigma"]).certify(
            torch.full((2,), 0.5), args["n0"], args["n"], args["alpha"], 32)


def test_bad_inputs():
    smooth = Smooth(ThresholdModel(T), 2, SIGMA)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        smooth.certify(torch.tensor([1.5, 0.2]), 10, 100, 0.01, 32)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        smooth.certify_batch(torch.tensor([[-0.1, 0.2]]), 10, 100, 0.01, 32)
    with pytest.raises(InputError, match="NaN"):
        smooth.predict(torch.tensor([float("nan"), 0.2]), 100, 0.01, 32)
    with pytest.raises(InputError, match="num_classes"):
        Smooth(ThresholdModel(T), 1, SIGMA)


def test_warns_when_n_cannot_certify_anything():
    smooth = Smooth(ThresholdModel(T), 2, SIGMA)
    x = torch.full((2,), 0.2)
    with pytest.warns(UserWarning, match="cannot certify any input"):
        cls, rad = smooth.certify(x, 10, 9, 0.001, 32)      # 0.001^(1/9) < 1/2
    assert (cls, rad) == (ABSTAIN, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        smooth.certify(x, 10, 100, 0.001, 32)
    assert max_certifiable_radius(9, 0.001, 1.0) < 0 < max_certifiable_radius(10, 0.001, 1.0)
    assert math.isclose(max_certifiable_radius(10, 0.001, 1.0), norm.ppf(0.001 ** 0.1), rel_tol=1e-9)


def test_model_mode_restored_and_no_grad():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    model.train()
    smooth = Smooth(model, 3, 0.5)
    smooth.certify(torch.rand(4), 10, 50, 0.05, 32)
    assert model.training
    assert all(p.grad is None for p in model.parameters())

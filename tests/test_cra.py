"""Noise and CRA losses (eq. 9, 10) and the differentiable smoothed radius (eq. 11)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm

from abstain.errors import ConfigError, InputError
from abstain.losses import get
from abstain.smoothing import noisy_logits, safe_icdf, smoothed_radius, soft_smoothed_probs


def test_safe_icdf_values_and_limits():
    p = torch.tensor([0.5, 0.975, 0.2, 0.0, 1.0], dtype=torch.float64, requires_grad=True)
    v = safe_icdf(p)
    np.testing.assert_allclose(v[:3].detach().numpy(), norm.ppf([0.5, 0.975, 0.2]), atol=5e-5)
    assert torch.isfinite(v).all()
    assert float(v[4].detach()) == pytest.approx(norm.ppf(1 - 1e-6), rel=1e-6)
    v.sum().backward()
    assert torch.isfinite(p.grad).all() and (p.grad > 0).all()   # monotone, never zeroed
    # float32 in, float32 out, computed without NaN at the ends
    assert safe_icdf(torch.tensor([0.0, 1.0])).dtype == torch.float32


def test_smoothed_radius_value_and_gradient():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype=torch.float64, requires_grad=True)
    sigma = 0.5
    r = smoothed_radius(probs, sigma)
    expect = [0.25 * (norm.ppf(0.7) - norm.ppf(0.2)), 0.25 * (norm.ppf(0.6) - norm.ppf(0.3))]
    np.testing.assert_allclose(r.detach().numpy(), expect, atol=5e-5)
    r_label = smoothed_radius(probs, sigma, torch.tensor([1, 2]))          # literal eq. 11
    np.testing.assert_allclose(r_label.detach().numpy(),
                               [0.25 * (norm.ppf(0.2) - norm.ppf(0.7)), expect[1]], atol=5e-5)
    r[0].backward()
    # d/dp Φ⁻¹(p) = 1/φ(Φ⁻¹(p)) (times the 1 − 2e-6 squeeze)
    g = probs.grad[0].numpy()
    np.testing.assert_allclose(g, [0.25 / norm.pdf(norm.ppf(0.7)), -0.25 / norm.pdf(norm.ppf(0.2)), 0.0],
                               rtol=1e-5)
    assert torch.autograd.gradcheck(lambda q: smoothed_radius(q, sigma), (probs.detach().clone().requires_grad_(),))
    with pytest.raises(InputError, match="sigma"):
        smoothed_radius(probs, 0.0)


def test_soft_smoothed_probs_and_fresh_noisy_logits():
    logits = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    p = soft_smoothed_probs(logits, 4.0)
    s = torch.sigmoid(torch.tensor(4.0))
    assert torch.allclose(p, torch.tensor([[0.5, 0.5]])) and torch.allclose(
        soft_smoothed_probs(logits[:, :1], 4.0), torch.stack([s, 1 - s])[None])
    model = torch.nn.Flatten()                          # logits = the noisy input itself
    x = torch.full((3, 2), 0.5)
    a, b = noisy_logits(model, x, 0.3, 50), noisy_logits(model, x, 0.3, 50)
    assert a.shape == (3, 50, 2) and not torch.equal(a, b)
    assert torch.unique(a).numel() == a.numel()         # every copy of every input: its own noise
    assert abs(float((a - 0.5).std()) - 0.3) < 0.05
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(noisy_logits(model, x, 0.3, 4, g1), noisy_logits(model, x, 0.3, 4, g2))


class _Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 3)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.lin(x)


def test_noise_loss_fresh_noise_every_call_and_sample():
    model = _Recorder()
    x = torch.full((64, 2), 0.5)
    y = torch.zeros(64, dtype=torch.long)
    loss_fn = get("noise")
    l1, parts = loss_fn(model, x, y, {"sigma": 0.25})
    l2, _ = loss_fn(model, x, y, {"sigma": 0.25})
    n1, n2 = model.seen[0] - x, model.seen[1] - x
    assert not torch.equal(n1, n2)
    assert torch.unique(n1).numel() == n1.numel()
    assert abs(float(torch.cat([n1, n2]).std()) - 0.25) < 0.03
    with torch.no_grad():
        expect = float(F.cross_entropy(model.lin(model.seen[0]), y))
    assert float(l1.detach()) == pytest.approx(expect, rel=1e-6)
    assert float(parts["noise_ce"]) == pytest.approx(float(l1.detach()))
    with pytest.raises(ConfigError, match="sigma"):
        loss_fn(model, x, y, {})
    with pytest.raises(InputError, match="sigma"):
        loss_fn(model, x, y, {"sigma": -0.1})


def test_cra_loss_equals_eq9_on_a_tiny_case():
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 3)
    x = torch.tensor([[0.2, 0.9], [0.7, 0.1]])
    y = torch.tensor([0, 2])
    k, sigma, gamma, beta_ = 5, 0.5, 4.0, 0.7
    torch.manual_seed(123)
    loss, parts = get("cra")(model, x, y, {"sigma": sigma, "k": k, "gamma": gamma, "beta": beta_})
    torch.manual_seed(123)
    noise = torch.randn(2, k, 2)
    with torch.no_grad():
        z = model(x[:, None, :] + sigma * noise).double().numpy()          # (2, k, 3)
    total = 0.0
    for i in range(2):
        sm = np.exp(z[i]) / np.exp(z[i]).sum(1, keepdims=True)
        ce = -np.log(sm[:, y[i]]).mean()
        qual = np.mean(1 - sm[:, y[i]])
        soft = np.exp(gamma * z[i]) / np.exp(gamma * z[i]).sum(1, keepdims=True)
        pbar = np.sort(soft.mean(0))[::-1]
        cr = sigma / 2 * (norm.ppf(pbar[0]) - norm.ppf(pbar[1]))
        total += beta_ * ce + qual * cr
    assert float(loss.detach()) == pytest.approx(total / 2, abs=1e-4)
    assert set(parts) == {"noise_ce", "qualifier", "radius", "penalty"}
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_cra_penalty_shrinks_the_radius_of_a_robust_wrong_prediction():
    """With β = 0 only the penalty acts: gradient steps on a robustly misclassified point make
    the smoothed prediction less robust (smaller eq. 11 radius)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[2.0, 0.0], [-2.0, 0.0]]))
        model.bias.zero_()
    x = torch.tensor([[0.9, 0.5]])
    y = torch.tensor([1])                                # the model says 0, robustly: wrong
    params = {"sigma": 0.25, "k": 64, "beta": 0.0}
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    _, before = get("cra")(model, x, y, params)
    for _ in range(20):
        opt.zero_grad()
        loss, _ = get("cra")(model, x, y, params)
        loss.backward()
        opt.step()
    _, after = get("cra")(model, x, y, params)
    assert float(after["radius"]) < 0.8 * float(before["radius"])


def test_cra_bad_params():
    model = torch.nn.Linear(2, 3)
    x, y = torch.rand(2, 2), torch.tensor([0, 1])
    with pytest.raises(ConfigError, match="cr_class"):
        get("cra")(model, x, y, {"sigma": 0.25, "cr_class": "other"})
    with pytest.raises(ConfigError, match="gamma"):
        get("cra")(model, x, y, {"sigma": 0.25, "gamma": 0})

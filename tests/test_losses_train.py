"""Training losses (abstain.losses): values and gradients on hand-checkable cases."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import abstain.attacks as attacks_mod
from abstain import losses
from abstain.errors import ConfigError
from abstain.losses.adversarial import kl_per_sample, top_other_class, toward_top_other


class Constant(nn.Module):
    """f(x) = b: logits that do not depend on the input (every x' in the ball gives the same
    output, so each loss has a closed form in b)."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.tensor(logits))
        self.w = nn.Parameter(torch.zeros(1))  # keeps x in the graph for the attacks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b.expand(x.shape[0], -1) + self.w * x.flatten(1).sum(1, keepdim=True)


def _linear(seed: int = 0, d: int = 2, k: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, k))


def _grad(loss: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, p)
    return g


X1 = torch.tensor([[0.3, 0.6]])


def test_standard_value_and_gradient_hand_checked():
    m = Constant([2.0, 0.0, 1.0])
    y = torch.tensor([1])
    loss, parts = losses.get("standard")(m, X1, y, {})
    p = torch.softmax(torch.tensor([2.0, 0.0, 1.0]), 0)
    assert float(loss.detach()) == pytest.approx(-math.log(float(p[1])), rel=1e-6)
    assert torch.allclose(_grad(loss, m.b), p - F.one_hot(y, 3)[0].float(), atol=1e-6)
    assert float(parts["ce"]) == pytest.approx(float(loss.detach()))


def test_pgd_at_on_input_independent_model_is_ce():
    m = Constant([2.0, 0.0, 1.0])
    y = torch.tensor([2])
    loss, _ = losses.get("pgd-at")(m, X1, y, {"eps": 0.1, "generator": torch.Generator().manual_seed(0)})
    p = torch.softmax(m.b.detach(), 0)
    assert float(loss.detach()) == pytest.approx(-math.log(float(p[2])), rel=1e-6)
    assert torch.allclose(_grad(loss, m.b), p - F.one_hot(y, 3)[0].float(), atol=1e-6)


def test_kl_per_sample_matches_definition_and_torch():
    p = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    logits_q = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    q = torch.softmax(logits_q, 1)
    manual = torch.tensor([0.5 * math.log(0.5 / q[0, 0]) + 0.5 * math.log(0.5 / q[0, 1]),
                           sum(float(p[1, c]) * math.log(float(p[1, c]) / (1 / 3)) for c in range(3))])
    assert torch.allclose(kl_per_sample(p, logits_q), manual.float(), atol=1e-6)
    ref = F.kl_div(F.log_softmax(logits_q, 1), p, reduction="batchmean")
    assert float(kl_per_sample(p, logits_q).mean()) == pytest.approx(float(ref.detach()), rel=1e-6)


def test_top_other_class_and_eq8_objective():
    logits = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [0.0, 5.0, 4.0]])
    pred = torch.tensor([0, 1, 1])
    assert top_other_class(logits, pred).tolist() == [1, 0, 2]
    val = toward_top_other(logits, pred)
    assert torch.allclose(val, F.log_softmax(logits, 1)[[0, 1, 2], [1, 0, 2]])


def _record_attacks(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    calls: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    real = attacks_mod.pgd

    def spy(model, x, y, **kw):
        out = real(model, x, y, **kw)
        calls.append((x.detach().clone(), out.detach().clone(), kw["eps"], kw["norm"]))
        assert kw["early_stop"] is False
        return out

    monkeypatch.setattr(attacks_mod, "pgd", spy)
    return calls


@pytest.mark.parametrize("name", ["pgd-at", "trades", "era", "dga"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_inner_attacks_stay_in_ball_and_box(monkeypatch, name, norm):
    calls = _record_attacks(monkeypatch)
    m = _linear()
    x = torch.rand(32, 2)
    x[:4] = 0.0  # points on the box border
    y = torch.randint(0, 3, (32,))
    eps = 0.2 if norm == "linf" else 0.3
    for inner in ("targeted", "untargeted-shared"):
        losses.get(name)(m.train(), x, y, {"eps": eps, "norm": norm, "era_inner": inner,
                                           "generator": torch.Generator().manual_seed(1)})
    assert calls
    for x0, xa, e, nm in calls:
        d = (xa - x0).flatten(1)
        size = d.abs().max(1).values if nm == "linf" else d.norm(dim=1)
        assert float(size.max()) <= e + 1e-5
        assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0
    assert m.training  # the attacks restore the training mode


def test_trades_value_is_ce_plus_gamma_batchmean_kl_at_attack_point(monkeypatch):
    calls = _record_attacks(monkeypatch)
    m = _linear(3)
    x, y = torch.rand(16, 2), torch.randint(0, 3, (16,))
    loss, parts = losses.get("trades")(m, x, y, {"eps": 0.1, "gamma": 6.0,
                                                 "generator": torch.Generator().manual_seed(0)})
    (_, x_adv, _, _), = calls
    ref = F.cross_entropy(m(x), y) + 6.0 * F.kl_div(F.log_softmax(m(x_adv), 1), F.softmax(m(x), 1),
                                                    reduction="batchmean")
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    assert float(parts["kl"]) > 0  # the inner maximisation found a point where the outputs differ


def test_trades_inner_point_increases_kl_over_start(monkeypatch):
    calls = _record_attacks(monkeypatch)
    m = _linear(4)
    x, y = torch.rand(64, 2) * 0.5 + 0.25, torch.randint(0, 3, (64,))
    losses.get("trades")(m, x, y, {"eps": 0.1, "generator": torch.Generator().manual_seed(0)})
    (x0, xa, _, _), = calls
    x_rand = (x0 + (torch.rand_like(x0) * 2 - 1) * 0.1).clamp(0, 1)
    with torch.no_grad():
        p = F.softmax(m(x0), 1)
        kl_attack = kl_per_sample(p, m(xa))
        kl_random = kl_per_sample(p, m(x_rand))
    assert float(kl_attack.mean()) > 2 * float(kl_random.mean())
    assert float((kl_attack >= kl_random - 1e-7).float().mean()) >= 0.9


def test_era_penalty_hand_checked_value_and_gradient():
    """Wrong prediction F(x)=0 ≠ y=1: penalty = (1 − p_1)·CE(b, t) with t = argmax_{c≠0} = 2;
    the TRADES KL vanishes (f does not depend on x)."""
    logits = [2.0, 0.0, 1.0]
    m = Constant(logits)
    y = torch.tensor([1])
    beta = 0.5
    for inner in ("targeted", "untargeted-shared"):
        loss, parts = losses.get("era")(m, X1, y, {"eps": 0.1, "beta": beta, "era_inner": inner,
                                                   "generator": torch.Generator().manual_seed(0)})
        p = torch.softmax(torch.tensor(logits), 0)
        ce_y, ce_t = -math.log(float(p[1])), -math.log(float(p[2]))
        expected = beta * ce_y + (1 - float(p[1])) * ce_t
        assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
        assert float(parts["qualifier"]) == pytest.approx(1 - float(p[1]), rel=1e-6)
        e = torch.eye(3)
        grad_expected = (beta * (p - e[1]) - float(p[1]) * (e[1] - p) * ce_t
                         + (1 - float(p[1])) * (p - e[2]))
        assert torch.allclose(_grad(loss, m.b), grad_expected, atol=1e-5)


def test_soft_qualifier_zeroes_era_penalty_for_confident_correct_sample():
    m = Constant([0.0, 200.0, 0.0])
    y = torch.tensor([1])
    loss, parts = losses.get("era")(m, X1, y, {"eps": 0.1, "beta": 2.0,
                                               "generator": torch.Generator().manual_seed(0)})
    assert float(parts["qualifier"]) == 0.0
    assert float(parts["penalty"]) == 0.0
    assert float(parts["revadv"]) > 100  # the penalty's CE itself is large: only the qualifier zeroes it


def test_era_with_correct_confident_model_equals_beta_trades():
    """A model that separates the classes with huge margins: the qualifier is 0 in float32,
    so ERA (targeted, same generator seed => same TRADES point) = β·TRADES, value and gradient."""
    torch.manual_seed(0)
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[400.0, 0.0], [-400.0, 0.0]]))
        lin.bias.copy_(torch.tensor([-200.0, 200.0]))
    x = torch.tensor([[0.9, 0.5], [0.8, 0.1], [0.1, 0.3], [0.2, 0.9]])
    y = torch.tensor([0, 0, 1, 1])
    beta = 3.0
    params = {"eps": 0.05, "beta": beta, "gamma": 6.0}
    l_era, parts = losses.get("era")(lin, x, y, {**params, "generator": torch.Generator().manual_seed(5)})
    g_era = torch.autograd.grad(l_era, list(lin.parameters()))
    l_tr, _ = losses.get("trades")(lin, x, y, {**params, "generator": torch.Generator().manual_seed(5)})
    g_tr = torch.autograd.grad(l_tr, list(lin.parameters()))
    assert float(parts["qualifier"]) == 0.0
    assert float(l_era.detach()) == pytest.approx(beta * float(l_tr.detach()), rel=1e-6, abs=1e-12)
    for a, b in zip(g_era, g_tr):
        assert torch.allclose(a, beta * b, atol=1e-6)


def test_era_targeted_inner_attack_minimises_ce_towards_adversarial_class(monkeypatch):
    calls = _record_attacks(monkeypatch)
    m = _linear(7)
    x, y = torch.rand(64, 2) * 0.6 + 0.2, torch.randint(0, 3, (64,))
    losses.get("era")(m, x, y, {"eps": 0.1, "era_inner": "targeted",
                                "generator": torch.Generator().manual_seed(0)})
    assert len(calls) == 2  # TRADES' KL point and the eq. 8 point
    x0, x_rev, _, _ = calls[1]
    with torch.no_grad():
        pred = m(x0).argmax(1)
        before = -toward_top_other(m(x0), pred)
        after = -toward_top_other(m(x_rev), pred)
    assert float(after.mean()) < float(before.mean()) - 1e-3
    assert bool((after <= before + 1e-4).float().mean() > 0.9)


def test_era_untargeted_shared_uses_one_attack(monkeypatch):
    calls = _record_attacks(monkeypatch)
    m = _linear(7)
    x, y = torch.rand(16, 2), torch.randint(0, 3, (16,))
    losses.get("era")(m, x, y, {"eps": 0.1, "era_inner": "untargeted-shared",
                                "generator": torch.Generator().manual_seed(0)})
    assert len(calls) == 1


def test_dga_hand_checked_value():
    logits = [2.0, 0.0, 1.0]
    m = Constant(logits)
    y = torch.tensor([1])
    loss, parts = losses.get("dga")(m, X1, y, {"eps": 0.1, "beta": 0.5,
                                               "generator": torch.Generator().manual_seed(0)})
    p = torch.softmax(torch.tensor(logits), 0)
    expected = 0.5 * -math.log(float(p[1])) - math.log(float(p[1]) + float(p[2]))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    # gradient: d/db of β·CE − log(p_y + p_t)
    e = torch.eye(3)
    s = float(p[1] + p[2])
    dpy, dpt = float(p[1]) * (e[1] - p), float(p[2]) * (e[2] - p)
    assert torch.allclose(_grad(loss, m.b), 0.5 * (p - e[1]) - (dpy + dpt) / s, atol=1e-5)


def test_losses_are_deterministic_under_a_seeded_generator():
    m = _linear(1)
    x, y = torch.rand(16, 2), torch.randint(0, 3, (16,))
    for name in ("pgd-at", "trades", "era", "dga"):
        a, _ = losses.get(name)(m, x, y, {"eps": 0.1, "generator": torch.Generator().manual_seed(3)})
        b, _ = losses.get(name)(m, x, y, {"eps": 0.1, "generator": torch.Generator().manual_seed(3)})
        assert float(a.detach()) == float(b.detach())


def test_bad_loss_parameters_are_config_errors():
    m = _linear()
    x, y = torch.rand(4, 2), torch.randint(0, 3, (4,))
    with pytest.raises(ConfigError, match="eps"):
        losses.get("trades")(m, x, y, {})
    with pytest.raises(Exception, match="eps"):
        losses.get("trades")(m, x, y, {"eps": -0.1})
    with pytest.raises(ConfigError, match="era_inner"):
        losses.get("era")(m, x, y, {"eps": 0.1, "era_inner": "bogus"})
    with pytest.raises(ConfigError, match="beta"):
        losses.get("era")(m, x, y, {"eps": 0.1, "beta": -1})
    with pytest.raises(ConfigError, match="unknown loss"):
        losses.get("nope")

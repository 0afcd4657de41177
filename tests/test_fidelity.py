"""The authors' variants (``params["variant"] = "authors"``) against references written by
hand from the authors' code (ymerkli/robust-abstain: loss/revadv.py, loss/trades.py,
loss/revcert.py, train/train_revadv.py, utils/schedulers.py, abstain/confidence_threshold.py),
on fixed perturbations in place of the inner attacks / noise draws; and what swapping
``variant`` changes (exactly the rows of docs/fidelity.md).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions.normal import Normal

import abstain.attacks as attacks_mod
import abstain.losses.cra as cra_mod
from abstain import config, losses
from abstain.errors import ConfigError, InputError
from abstain.losses.adversarial import kl_objective, toward_top_other
from abstain.records import column as col
from abstain.selectors.sr import SoftmaxResponse

N, D, K = 12, 4, 3
BETA, GAMMA = 0.6, 6.0


def _mlp(seed: int = 0, bn: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(D, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.ReLU(), nn.Linear(8, K)]
    m = nn.Sequential(*layers)
    if bn:   # running statistics far from any batch's: eval and train mode differ clearly
        with torch.no_grad():
            m[1].running_mean.fill_(0.3)
            m[1].running_var.fill_(2.0)
    return m.train()


def _data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(N, D, generator=g) * 0.8 + 0.1, torch.randint(0, K, (N,), generator=g)


def _delta(seed: int) -> torch.Tensor:
    return (torch.rand(N, D, generator=torch.Generator().manual_seed(seed)) - 0.5) * 0.2


# fixed perturbations per inner objective, in place of the attacks
DELTAS = {"ce": _delta(11), "kl": _delta(12), "rev": _delta(13)}


def _fixed_attacks(monkeypatch) -> list[dict]:
    calls: list[dict] = []

    def fake_pgd(model, x, y, *, loss="ce", random_start=True, x_init=None, **kw):
        kind = "ce" if loss == "ce" else "kl" if loss is kl_objective else \
            "rev" if loss is toward_top_other else "other"
        calls.append({"kind": kind, "y": y.detach().clone(), "random_start": random_start,
                      "x_init": x_init is not None})
        return (x + DELTAS[kind]).clamp(0.0, 1.0)

    monkeypatch.setattr(attacks_mod, "pgd", fake_pgd)
    return calls


def _grads(loss: torch.Tensor, model: nn.Module) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(model.parameters())))


def _assert_same(loss, ref, model, atol=1e-6):
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), abs=atol, rel=1e-6)
    for a, b in zip(_grads(loss, model), _grads(ref, model)):
        assert torch.allclose(a, b, atol=atol, rtol=1e-5)


# ----------------------------------------------------------------- hand-written references
def _authors_revadv_parts(model, x, y, x_adv):
    """train_revadv.py: logits in eval mode, then revadv_loss / trades_loss(reduction='none')."""
    model.eval()
    nat_out = model(x)
    adv_out = model(x_adv)
    model.train()
    nat_pred = nat_out.argmax(1)
    top2 = torch.argsort(adv_out, dim=1, descending=True)[:, :2]
    adv_t = torch.where(top2[:, 0] == nat_pred, top2[:, 1], top2[:, 0])
    loss_natural = F.cross_entropy(nat_out, y, reduction="none")
    loss_robust = nn.KLDivLoss(reduction="none")(F.log_softmax(adv_out, dim=1),
                                                 F.softmax(nat_out, dim=1)).mean(dim=1)
    trades = loss_natural + GAMMA * loss_robust
    return nat_out, adv_out, adv_t, trades


def authors_era_reference(model, x, y, x_adv):
    nat_out, adv_out, adv_t, trades = _authors_revadv_parts(model, x, y, x_adv)
    p_inacc = 1 - torch.gather(F.softmax(nat_out, dim=1), 1, y.unsqueeze(1)).squeeze()
    revadv = p_inacc * F.cross_entropy(adv_out, adv_t, reduction="none")
    return (revadv + BETA * trades).mean()


def authors_dga_reference(model, x, y, x_adv):
    nat_out, adv_out, adv_t, trades = _authors_revadv_parts(model, x, y, x_adv)
    logits = torch.cat([nat_out, torch.gather(adv_out, 1, adv_t.unsqueeze(1))], dim=1)
    probs = F.softmax(logits, dim=1)
    p_abstain = probs[:, -1]
    p_y = torch.gather(probs, 1, y.unsqueeze(1)).squeeze()
    gambler = -1 * torch.log(1.0 * p_y + p_abstain)
    return (gambler + BETA * trades).mean()


SIGMA, KN, TEMP = 0.25, 5, 4.0
NOISE = torch.randn(N, KN, D, generator=torch.Generator().manual_seed(21))


def _fixed_noise(monkeypatch) -> None:
    def fake_noisy_logits(model, x, sigma, k, generator=None):
        n = x.shape[0]
        return model((x[:, None] + sigma * NOISE[:, :k]).reshape(n * k, -1)).reshape(n, k, -1)

    monkeypatch.setattr(cra_mod, "noisy_logits", fake_noisy_logits)


def authors_cra_reference(model, x, y, beta):
    """revcert_radius_loss with the same noise (sample-major copies, as their repeat/view)."""
    noisy = (x[:, None] + SIGMA * NOISE).reshape(N * KN, D)
    outputs = model(noisy).reshape((N, KN, K))
    outputs_softmax = F.softmax(outputs, dim=2).mean(1)
    p_inacc = 1 - torch.gather(outputs_softmax, dim=1, index=y.unsqueeze(1)).squeeze()
    loss_classification = F.cross_entropy(outputs.mean(1), y, reduction="none")
    beta_outputs_softmax = F.softmax(outputs * TEMP, dim=2).mean(1)
    top2_probs, _ = torch.topk(beta_outputs_softmax, 2)
    out0, out1 = top2_probs[:, 0] - 1e-6, top2_probs[:, 1] + 1e-6
    normal = Normal(torch.tensor([0.0]), torch.tensor([1.0]))
    cert_radius = SIGMA / 2 * (normal.icdf(out0) - normal.icdf(out1))
    return (p_inacc * cert_radius + beta * loss_classification).mean()


def authors_beta_schedule(epochs: int, beta: float = 0.75) -> list[float]:
    """train_revcert.py's loop with StepScheduler(20, 0.1): the β each epoch trains with."""
    used = []
    for epoch in range(epochs):
        used.append(beta)
        if not ((epoch == 0) or (epoch % 20 != 0)):
            beta = beta * 0.1
    return used


# ----------------------------------------------------------------- authors == reference
def _adv_params(**kw):
    return {"eps": 0.1, "beta": BETA, "gamma": GAMMA, "generator": torch.Generator().manual_seed(0), **kw}


@pytest.mark.parametrize("name,reference", [("era", authors_era_reference),
                                            ("dga", authors_dga_reference)])
def test_authors_era_dga_equal_their_code_value_and_gradient(monkeypatch, name, reference):
    calls = _fixed_attacks(monkeypatch)
    m = _mlp()
    x, y = _data()
    buffers = [b.clone() for b in m.buffers()]
    loss, _ = losses.get(name)(m, x, y, _adv_params(variant="authors"))
    # one untargeted attack with a random start, aimed at the eval-mode prediction F(x)
    assert [c["kind"] for c in calls] == ["ce"] and calls[0]["random_start"]
    m.eval()
    with torch.no_grad():
        assert torch.equal(calls[0]["y"], m(x).argmax(1))
    m.train()
    assert m.training  # mode restored
    assert all(torch.equal(a, b) for a, b in zip(buffers, m.buffers()))  # BatchNorm frozen
    x_adv = (x + DELTAS["ce"]).clamp(0, 1)
    _assert_same(loss, reference(m, x, y, x_adv), m)


def test_authors_cra_equals_their_code_value_and_gradient(monkeypatch):
    _fixed_noise(monkeypatch)
    m = _mlp(3)
    x, y = _data(4)
    for epoch, beta in ((0, 0.75), (20, 0.75), (21, 0.075), (45, 0.0075)):
        loss, _ = losses.get("cra")(m, x, y, {"sigma": SIGMA, "k": KN, "gamma": TEMP,
                                              "variant": "authors", "epoch": epoch})
        _assert_same(loss, authors_cra_reference(m, x, y, beta), m, atol=2e-6)


def test_authors_beta_schedule_matches_their_scheduler_loop():
    used = authors_beta_schedule(60)
    assert [cra_mod.authors_beta(0.75, e) for e in range(60)] == pytest.approx(used, rel=1e-12)
    assert used[20] == 0.75 and used[21] == pytest.approx(0.075) and used[41] == pytest.approx(0.0075)


def test_authors_cra_needs_the_epoch():
    m = _mlp(bn=False)
    x, y = _data()
    with pytest.raises(ConfigError, match="epoch"):
        losses.get("cra")(m, x, y, {"sigma": SIGMA, "k": 2, "variant": "authors"})
    with pytest.raises(ConfigError, match="cr_class"):
        losses.get("cra")(m, x, y, {"sigma": SIGMA, "k": 2, "variant": "authors", "epoch": 0,
                                    "cr_class": "label"})


# ----------------------------------------------------------------- what swapping changes
def test_era_authors_vs_paper_shared_differs_only_by_kl_over_k_and_eval_mode(monkeypatch):
    """docs/fidelity.md rows 'KL / K' and 'eval mode': on a model without BatchNorm (eval mode
    changes nothing) and the same fixed point, the only change is KL → KL/K."""
    _fixed_attacks(monkeypatch)
    m = _mlp(bn=False)
    x, y = _data()
    lp, pp = losses.get("era")(m, x, y, _adv_params(era_inner="untargeted-shared"))
    la, pa = losses.get("era")(m, x, y, _adv_params(variant="authors"))
    for key in ("ce", "qualifier", "revadv", "penalty"):
        assert float(pa[key]) == pytest.approx(float(pp[key]), rel=1e-6, abs=1e-8)
    assert float(pa["kl"]) == pytest.approx(float(pp["kl"]) / K, rel=1e-6)
    shift = BETA * GAMMA * float(pp["kl"]) * (1 - 1 / K)
    assert float(la.detach()) == pytest.approx(float(lp.detach()) - shift, rel=1e-6, abs=1e-7)
    assert shift > 1e-4   # the difference is real on this input

    # with BatchNorm: the authors' variant on a train-mode model == the paper's on the same
    # model in eval mode (then KL/K): eval mode is the only other change
    bn = _mlp()
    la, pa = losses.get("era")(bn, x, y, _adv_params(variant="authors"))
    bn.eval()
    lp, pp = losses.get("era")(bn, x, y, _adv_params(era_inner="untargeted-shared"))
    bn.train()
    assert float(pa["kl"]) == pytest.approx(float(pp["kl"]) / K, rel=1e-6)
    assert float(la.detach()) == pytest.approx(float(lp.detach()) - BETA * GAMMA * float(pp["kl"]) * (1 - 1 / K), rel=1e-6)
    # and the paper's variant in train mode moves BatchNorm's running statistics
    before = bn[1].running_mean.clone()
    losses.get("era")(bn, x, y, _adv_params())
    assert not torch.equal(before, bn[1].running_mean)


def test_era_paper_default_uses_two_attacks_authors_one(monkeypatch):
    """docs/fidelity.md row 'inner attack': paper = TRADES' KL point (from x + 0.001·N) and
    the eq. 8 point; authors = one untargeted CE point shared by both terms."""
    calls = _fixed_attacks(monkeypatch)
    m = _mlp(bn=False)
    x, y = _data()
    losses.get("era")(m, x, y, _adv_params())
    assert [(c["kind"], c["x_init"]) for c in calls] == [("kl", True), ("rev", False)]
    calls.clear()
    losses.get("era")(m, x, y, _adv_params(variant="authors"))
    assert [c["kind"] for c in calls] == ["ce"]
    with pytest.raises(ConfigError, match="era_inner"):
        losses.get("era")(m, x, y, _adv_params(variant="authors", era_inner="targeted"))
    with pytest.raises(ConfigError, match="variant"):
        losses.get("era")(m, x, y, _adv_params(variant="both"))


def test_dga_authors_joint_softmax_vs_paper_two_softmaxes(monkeypatch):
    """docs/fidelity.md row 'DGA form': same TRADES relation as ERA; the gambler term is
    −log(p_y + p_abstain) from one (K+1)-way softmax vs −log(f(x)_y + f(x')_t) from two."""
    _fixed_attacks(monkeypatch)
    m = _mlp(bn=False)
    x, y = _data()
    lp, pp = losses.get("dga")(m, x, y, _adv_params(era_inner="untargeted-shared"))
    la, pa = losses.get("dga")(m, x, y, _adv_params(variant="authors"))
    assert float(pa["ce"]) == pytest.approx(float(pp["ce"]), rel=1e-6)
    assert float(pa["kl"]) == pytest.approx(float(pp["kl"]) / K, rel=1e-6)
    with torch.no_grad():
        z, za = m(x), m((x + DELTAS["ce"]).clamp(0, 1))
        t = torch.where(torch.argsort(za, 1, descending=True)[:, 0] == z.argmax(1),
                        torch.argsort(za, 1, descending=True)[:, 1], za.argmax(1))
        two = -torch.log(F.softmax(z, 1)[range(N), y] + F.softmax(za, 1)[range(N), t]).mean()
        joint_p = F.softmax(torch.cat([z, za[range(N), t][:, None]], 1), 1)
        joint = -torch.log(joint_p[range(N), y] + joint_p[:, -1]).mean()
    assert float(pp["gambler"]) == pytest.approx(float(two), rel=1e-6)
    assert float(pa["gambler"]) == pytest.approx(float(joint), rel=1e-6)
    assert float(pa["gambler"]) > float(pp["gambler"])  # p_y + p_abstain ≤ 1 in the joint form


def test_cra_authors_vs_paper_changes_noise_term_beta_and_nothing_else(monkeypatch):
    """docs/fidelity.md rows 'CRA noise term', 'CRA β' and 'Φ⁻¹ guard': same qualifier,
    the radius equal up to the Φ⁻¹ guard, the noise term CE(mean logits) vs mean CE."""
    _fixed_noise(monkeypatch)
    m = _mlp(5, bn=False)
    x, y = _data(6)
    base = {"sigma": SIGMA, "k": KN, "gamma": TEMP}
    lp, pp = losses.get("cra")(m, x, y, base)
    la, pa = losses.get("cra")(m, x, y, {**base, "variant": "authors", "epoch": 0})
    assert float(pa["qualifier"]) == pytest.approx(float(pp["qualifier"]), rel=1e-6)
    assert float(pa["radius"]) == pytest.approx(float(pp["radius"]), abs=1e-5)
    with torch.no_grad():
        z = m((x[:, None] + SIGMA * NOISE).reshape(N * KN, D)).reshape(N, KN, K)
        mean_ce = F.cross_entropy(z.reshape(N * KN, K), y.repeat_interleave(KN))
        ce_mean = F.cross_entropy(z.mean(1), y)
    assert float(pp["noise_ce"]) == pytest.approx(float(mean_ce), rel=1e-6)
    assert float(pa["noise_ce"]) == pytest.approx(float(ce_mean), rel=1e-6)
    assert float(ce_mean) < float(mean_ce)   # Jensen: the authors' term is smaller here
    # default β: 1 (paper) and 0.75 (authors)
    assert float(lp.detach()) == pytest.approx(1.0 * float(pp["noise_ce"]) + float(pp["penalty"]), rel=1e-6)
    assert float(la.detach()) == pytest.approx(0.75 * float(pa["noise_ce"]) + float(pa["penalty"]), rel=1e-6)


@pytest.mark.parametrize("name,params", [("standard", {}), ("pgd-at", {"eps": 0.1}),
                                         ("trades", {"eps": 0.1}), ("noise", {"sigma": 0.2})])
def test_variant_does_not_change_losses_without_authors_differences(name, params):
    """docs/fidelity.md: their TRADES/PGD/noise baselines compute what ours do."""
    m = _mlp(bn=False)
    x, y = _data()
    out = []
    for variant in ("paper", "authors"):
        torch.manual_seed(3)
        loss, _ = losses.get(name)(m, x, y, {**params, "variant": variant,
                                             "generator": torch.Generator().manual_seed(0)})
        out.append(float(loss.detach()))
    assert out[0] == out[1]


def test_config_variant_defaults_and_conflicts():
    text = '[data]\nname = "gauss3"\n[model]\narch = "mlp"\n[train]\nloss = "{loss}"\n[loss]\n{extra}'
    era = config.loads(text.format(loss="era", extra='eps = 0.1\nvariant = "authors"\n'))
    assert era["loss"]["era_inner"] == "untargeted-shared" and era["loss"]["beta"] == 1.0
    paper = config.loads(text.format(loss="era", extra="eps = 0.1\n"))
    assert paper["loss"]["variant"] == "paper" and paper["loss"]["era_inner"] == "targeted"
    cra = config.loads(text.format(loss="cra", extra='sigma = 0.25\nvariant = "authors"\n'))
    assert cra["loss"]["beta"] == 0.75
    assert config.loads(text.format(loss="cra", extra="sigma = 0.25\n"))["loss"]["beta"] == 1.0
    with pytest.raises(ConfigError, match="era_inner"):
        config.loads(text.format(loss="dga", extra='eps = 0.1\nvariant = "authors"\nera_inner = "targeted"\n'))
    with pytest.raises(ConfigError, match="variant"):
        config.loads(text.format(loss="era", extra='eps = 0.1\nvariant = "mine"\n'))


# ----------------------------------------------------------------- softmax response rule
def _sr_records():
    """Five samples at ε = 0.1: clean conf, and the APGDconf point (flipped or not)."""
    return {"conf": [0.95, 0.95, 0.95, 0.60, 0.95],
            col("flip_conf", 0.1): [False, True, True, True, False],
            col("flipconf_conf", 0.1): [0.0, 0.97, 0.50, 0.92, 0.0],
            # the paper's rule reads the minima over B_ε and B_2ε (ball=True)
            col("minconf_apgd", 0.1): [0.90, 0.90, 0.50, 0.60, 0.95],
            col("minconf_conf", 0.1): [0.93, 0.95, 0.50, 0.60, 0.95],
            col("minconf_apgd", 0.2): [0.85, 0.80, 0.40, 0.50, 0.70],
            col("minconf_conf", 0.2): [0.88, 0.90, 0.40, 0.50, 0.95]}


def test_sr_authors_rule_by_hand():
    r = _sr_records()
    d = SoftmaxResponse.decisions_for(r, 0.1, 0.9, rule="authors")
    # select: clean conf ≥ 0.9; robust: conf at the flipped APGDconf point, else the clean conf
    assert d.selected.tolist() == [True, True, True, False, True]
    assert d.robust_selected.tolist() == [True, True, False, True, True]
    p = SoftmaxResponse.decisions_for(r, 0.1, 0.9)   # the paper's rule: B_ε and B_2ε minima
    assert p.selected.tolist() == [True, True, False, False, True]
    assert p.robust_selected.tolist() == [False, False, False, False, False]
    with pytest.raises(InputError, match="conf"):
        SoftmaxResponse.decisions_for(r, 0.1, 0.9, attacks=("apgd",), rule="authors")
    with pytest.raises(InputError, match="rule"):
        SoftmaxResponse.decisions_for(r, 0.1, 0.9, rule="nobody")


def test_sr_authors_rule_on_a_model_agrees_with_its_records():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.rand(24, 2)
    sr = SoftmaxResponse(m, tau=0.6, eps=0.1, steps=10, rule="authors")
    rec = sr.records(x)
    d = SoftmaxResponse.decisions_for(rec, 0.1, 0.6, rule="authors")
    assert sr.select(x).tolist() == d.selected.tolist()
    assert sr.robust_select(x).tolist() == d.robust_selected.tolist()
    assert d.selected.tolist() == (rec["conf"] >= 0.6).tolist()


def test_authors_radius_guard_is_theirs():
    """docs/fidelity.md row 'Φ⁻¹ guard': their shift p_(1) − 1e-6, p_(2) + 1e-6 (a tie gives
    a slightly negative radius), ours an affine squeeze (a tie gives exactly 0)."""
    from abstain.smoothing.radius import smoothed_radius

    probs = torch.tensor([[0.5, 0.5, 0.0], [0.7, 0.2, 0.1]], dtype=torch.float64)
    normal = Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    theirs = SIGMA / 2 * (normal.icdf(probs.topk(2).values[:, 0] - 1e-6) - normal.icdf(probs.topk(2).values[:, 1] + 1e-6))
    assert torch.allclose(cra_mod.authors_radius(probs, SIGMA), theirs, rtol=1e-9, atol=1e-15)
    assert float(theirs[0]) < 0 and float(smoothed_radius(probs, SIGMA)[0]) == 0.0
    assert torch.allclose(cra_mod.authors_radius(probs, SIGMA), smoothed_radius(probs, SIGMA), atol=1e-5)


def test_authors_cra_radius_on_a_tie_is_their_negative_value():
    """The guard as seen through the loss: two classes tie exactly (input-independent logits)."""
    m = nn.Linear(D, K)
    with torch.no_grad():
        m.weight.zero_()
        m.bias.copy_(torch.tensor([1.0, 1.0, 0.0]))
    x, y = _data()
    _, pa = losses.get("cra")(m, x, y, {"sigma": SIGMA, "k": 2, "variant": "authors", "epoch": 0})
    _, pp = losses.get("cra")(m, x, y, {"sigma": SIGMA, "k": 2})
    expected = SIGMA / 2 * (Normal(0.0, 1.0).icdf(torch.tensor(0.5 - 1e-6)) - Normal(0.0, 1.0).icdf(torch.tensor(0.5 + 1e-6)))
    assert float(pa["radius"]) == pytest.approx(float(expected), rel=0.05)
    assert float(expected) < -5e-7 and float(pp["radius"]) == 0.0


@pytest.mark.parametrize("name", ["noise", "cra"])
def test_noise_losses_draw_from_the_trainers_generator(name):
    """The trainer passes a generator seeded per (seed, epoch, batch, rank); noise drawn from it
    differs between ranks and repeats on resume, whatever the global RNG does (PITFALLS.md:
    losses on the global RNG give every rank the same noise)."""
    m = _mlp(bn=False)
    x, y = _data()
    params = {"sigma": SIGMA, "k": 3}

    def value(seed: int, global_seed: int) -> float:
        torch.manual_seed(global_seed)
        loss, _ = losses.get(name)(m, x, y, {**params, "generator": torch.Generator().manual_seed(seed)})
        return float(loss.detach())

    assert value(1, 0) == value(1, 99)      # the global RNG does not matter
    assert value(1, 0) != value(2, 0)       # another rank / batch seed draws other noise

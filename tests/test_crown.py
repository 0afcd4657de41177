"""CROWN margin bounds (``abstain.attacks.crown``, issue 24 item 3): sound on random small
nets of every supported layer (the nets of ``test_attacks_bounds_layers``: Linear, Conv1d,
Conv2d, eval BatchNorm with random statistics and negative scales, ReLU, max and average
pooling, Flatten / view / slicing / cat, residual blocks; plus an overlapping max pool),
for both intermediate modes, ℓ∞ and ℓ2, several radii: the bound never exceeds the margin at
random points and vertices of the ball ∩ box nor at the strong attack's best point. It is
exact on affine nets, tends to the clean margin at a tiny ε, and a model with an
unsupported node gets ``None``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from abstain.attacks.bounds import certified, margin_lower_bound
from abstain.attacks.crown import crown_margin_lower_bound
from abstain.attacks.diversity import margin_to_flip
from abstain.attacks.strong import strong_candidates
from test_attacks_bounds_layers import DT, NETS, _unsupported, ball_points, build


def overlap_pool(k: int) -> nn.Module:
    """Overlapping (3×3, stride 1, padded) and strided 1-D max pooling: no dominance shortcut."""
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 1, 1), nn.Flatten(),
                         nn.Unflatten(1, (3, 25)), nn.MaxPool1d(3, 2), nn.Flatten(), nn.Linear(36, k))


ALL = dict(NETS, overlap_pool=(overlap_pool, (1, 5, 5)))


def make(name: str, seed: int) -> nn.Module:
    """``build`` of the interval tests (random BatchNorm statistics), or the extra net."""
    if name in NETS:
        return build(name, seed)
    torch.manual_seed(seed)
    return ALL[name][0](4).to(DT).eval()


def margins(m: nn.Module, pts: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """The margin z_y - max_{t≠y} z_t at every point, (n, N)."""
    with torch.no_grad():
        out = m(pts.flatten(0, 1))
    return margin_to_flip(out, pred.repeat(pts.shape[0])).view(pts.shape[0], pts.shape[1])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", sorted(ALL))
def test_crown_bound_is_never_violated(name: str, seed: int) -> None:
    """CROWN (IBP and CROWN intermediates) ≤ the margin at 48 random points and vertices of
    the ball ∩ box and at the strong attack's best point, ℓ∞ and ℓ2, three radii each."""
    g = torch.Generator().manual_seed(200 + seed)
    m = make(name, seed)
    x = torch.rand((10,) + ALL[name][1], generator=g, dtype=DT)
    with torch.no_grad():
        z = m(x)
    pred = z.argmax(1)
    for norm, eps in (("linf", 0.001), ("linf", 0.02), ("linf", 0.1), ("l2", 0.01), ("l2", 0.1), ("l2", 0.5)):
        adv, _ = strong_candidates(m, x, pred, z, eps=eps, norm=norm, steps=10, ids=torch.arange(10),
                                   use_bounds=False, seed=seed)
        pts = torch.cat([ball_points(x, eps, norm, 48, g), adv.unsqueeze(0)])
        low = margins(m, pts, pred).amin(0)
        tol = 1e-9 * (1 + z.abs().amax())
        for inter in ("ibp", "crown"):
            lb = crown_margin_lower_bound(m, x, pred, eps, norm, intermediate=inter)
            assert lb is not None and lb.shape == (10,)
            assert (lb <= low + tol).all(), (name, norm, eps, inter, (lb - low).max())


def test_small_chunks_give_the_same_bound() -> None:
    """Chunking the samples (a tiny ``budget``) changes nothing (a reshape by ``size(0)`` inside)."""
    m = build("resnet1d_bn", 0)
    x = torch.rand((9, 1, 16), generator=torch.Generator().manual_seed(3), dtype=DT)
    pred = m(x).argmax(1)
    a = crown_margin_lower_bound(m, x, pred, 0.05)
    b = crown_margin_lower_bound(m, x, pred, 0.05, budget=1)
    assert a is not None and b is not None and torch.allclose(a, b, atol=1e-12)


class Affine(nn.Module):
    """Conv, eval BatchNorm, average pool, a residual sum and two Linear layers, no ReLU."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm1d(3)
        self.fc1, self.fc2 = nn.Linear(12, 7), nn.Linear(7, k)
        self.skip = nn.Linear(12, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool1d(self.bn(self.conv(x)), 2).flatten(1)
        return self.fc2(self.fc1(h)) + self.skip(h)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_crown_is_exact_on_an_affine_net(norm: str) -> None:
    """For an affine net ``z = W x + b`` the bound equals ``min_t (w_y - w_t)·x - ε||w_y - w_t||_*``
    (dual norm; ℓ∞: ℓ1) on points whose ball lies in the box, and the ℓ∞ vertex attains it."""
    torch.manual_seed(0)
    m = Affine(4).to(DT)
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.2, 0.2)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(-1.5, 1.5)
    m.eval()
    eps = 0.05
    x = 0.1 + 0.8 * torch.rand(20, 1, 8, generator=torch.Generator().manual_seed(1), dtype=DT)
    z = m(x).detach()
    pred = z.argmax(1)
    w = torch.autograd.functional.jacobian(lambda t: m(t).sum(0), x[:1]).reshape(4, 8)
    c = w[pred].unsqueeze(1) - w.unsqueeze(0)                         # (N, K, d)
    dual = c.abs().sum(-1) if norm == "linf" else c.norm(dim=-1)
    exact = (z.gather(1, pred.view(-1, 1)) - z - eps * dual).scatter(1, pred.view(-1, 1), float("inf")).amin(1)
    for inter in ("ibp", "crown"):
        lb = crown_margin_lower_bound(m, x, pred, eps, norm, intermediate=inter)
        assert lb is not None and torch.allclose(lb, exact, atol=1e-10), (lb - exact).abs().max()
    if norm == "linf":
        t = (z.gather(1, pred.view(-1, 1)) - z - eps * dual).scatter(1, pred.view(-1, 1), float("inf")).argmin(1)
        vertex = x - eps * c[torch.arange(20), t].sign().view_as(x)
        with torch.no_grad():
            zv = m(vertex)
        reached = zv.gather(1, pred.view(-1, 1)).squeeze(1) - zv.gather(1, t.view(-1, 1)).squeeze(1)
        assert torch.allclose(reached, exact, atol=1e-10)


@pytest.mark.parametrize("name", sorted(ALL))
def test_crown_tends_to_the_clean_margin(name: str) -> None:
    """Not vacuous: at ε = 1e-7 within 1e-4 of the clean margin, ℓ∞ and ℓ2."""
    m = make(name, 3)
    x = torch.rand((20,) + ALL[name][1], generator=torch.Generator().manual_seed(7), dtype=DT)
    with torch.no_grad():
        z = m(x)
    pred, clean = z.argmax(1), margin_to_flip(z, z.argmax(1))
    for norm in ("linf", "l2"):
        lb = crown_margin_lower_bound(m, x, pred, 1e-7, norm)
        assert lb is not None and (lb <= clean + 1e-12).all() and (clean - lb < 1e-4).all()


class FunctionalPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool1d(self.a(x).unsqueeze(1), 2).flatten(1)


@pytest.mark.parametrize("i", range(6))
def test_unsupported_models_give_none(i: int) -> None:
    """Every model the interval walk refuses, and a max pool called as a function: ``None``."""
    m = (_unsupported() + [FunctionalPool().eval()])[i].to(DT)
    x = torch.rand(8, 6, generator=torch.Generator().manual_seed(i), dtype=DT)
    with torch.no_grad():
        z = m(x)
    assert crown_margin_lower_bound(m, x, z.argmax(1), 1e-6) is None
    assert crown_margin_lower_bound(m, x, z.argmax(1), 1e-6, intermediate="crown") is None


def test_bad_intermediate_is_an_error() -> None:
    m = build("project_mlp", 0)
    x = torch.rand(3, 6, dtype=DT)
    with pytest.raises(ValueError):
        crown_margin_lower_bound(m, x, m(x).argmax(1), 0.1, intermediate="lp")


@pytest.mark.parametrize("name", ["conv2d_chain", "resnet2d_bn", "project_cnn1d"])
def test_bounds_modes_take_the_larger_bound_and_prove_a_superset(name: str) -> None:
    """``bounds="crown"`` / ``"crown-full"`` = max(IBP, CROWN) ≥ each of them; their proofs
    contain IBP's, in ``certified`` and in the strong attack (whose proven points keep x)."""
    m = make(name, 1)
    x = torch.rand((12,) + ALL[name][1], generator=torch.Generator().manual_seed(5), dtype=DT)
    with torch.no_grad():
        z = m(x)
    pred = z.argmax(1)
    for eps in (0.005, 0.05):
        ibp = margin_lower_bound(m, x, pred, eps)
        for mode, inter in (("crown", "ibp"), ("crown-full", "crown")):
            both = margin_lower_bound(m, x, pred, eps, bounds=mode)
            cb = crown_margin_lower_bound(m, x, pred, eps, intermediate=inter)
            assert torch.equal(both, torch.maximum(ibp, cb))
            assert (certified(m, x, pred, z, eps, bounds=mode) >= certified(m, x, pred, z, eps)).all()
            cand, proven = strong_candidates(m, x, pred, z, eps=eps, norm="linf", steps=5, ids=torch.arange(12),
                                             bounds=mode)
            assert torch.equal(proven, certified(m, x, pred, z, eps, bounds=mode))
            assert torch.equal(cand[proven], x[proven])
    with pytest.raises(ValueError):
        margin_lower_bound(m, x, pred, 0.1, bounds="lp")

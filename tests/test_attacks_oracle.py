"""is_robust against exact answers: affine models (closed form, ℓ∞ and ℓ2) and a trained
gauss3 MLP (dense sampling of the 2-D ε-ball).

For an affine model f(x) = Wx + b on [0, 1]^d and a class pair (y, t) the margin
m_t(x') = (w_y - w_t)·x' + b_y - b_t is linear, so its minimum over B∞_ε(x) ∩ [0, 1]^d puts
every coordinate at the end of [max(0, x_i - ε), min(1, x_i + ε)] that lowers it; the
prediction y is robust iff min_t of these minima is >= 0. In ℓ2, when x - ε·ŵ_t stays in
the box for every t, the minimum is m_t(x) - ε·||w_y - w_t||.
"""
from __future__ import annotations

import pytest
import torch

from abstain import data
from abstain.attacks import is_robust
from abstain.models import create

DTYPE = torch.float64


def affine(d: int, k: int, g: torch.Generator) -> torch.nn.Linear:
    m = torch.nn.Linear(d, k).to(DTYPE)
    with torch.no_grad():
        m.weight.copy_(torch.randn(k, d, generator=g, dtype=DTYPE))
        m.bias.copy_(torch.randn(k, generator=g, dtype=DTYPE))
    return m.eval()


@torch.no_grad()
def linf_min_margin(m: torch.nn.Linear, x: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
    """Exact min over B∞_ε(x) ∩ box of min_{t≠y} margin; ``eps`` scalar or per sample (N, 1)."""
    pred = m(x).argmax(1)
    wd = m.weight[pred].unsqueeze(1) - m.weight.unsqueeze(0)          # (N, K, d): w_y - w_t
    bd = m.bias[pred].unsqueeze(1) - m.bias.unsqueeze(0)
    lo = (x - eps).clamp(min=0).unsqueeze(1)
    hi = (x + eps).clamp(max=1).unsqueeze(1)
    mm = torch.minimum(wd * lo, wd * hi).sum(-1) + bd
    return mm.scatter(1, pred.view(-1, 1), float("inf")).amin(1)


@torch.no_grad()
def linf_radius(m: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Exact flip radius by bisection on the closed form (inf when no flip exists)."""
    lo, hi = torch.zeros(x.shape[0], dtype=DTYPE), torch.ones(x.shape[0], dtype=DTYPE)
    for _ in range(60):
        mid = (lo + hi) / 2
        flips = linf_min_margin(m, x, mid.view(-1, 1)) < 0
        hi, lo = torch.where(flips, mid, hi), torch.where(flips, lo, mid)
    return torch.where(linf_min_margin(m, x, 1.0) < 0, hi, torch.full_like(hi, float("inf")))


def check_evidence(m, x, rob, adv, eps, norm):
    """Every non-robust flag comes with an input that flips and lies in ball and box."""
    bad = ~rob
    if not bad.any():
        return
    xa, xb = adv[bad], x[bad]
    with torch.no_grad():
        assert (m(xa).argmax(1) != m(xb).argmax(1)).all()
    assert xa.min() >= 0 and xa.max() <= 1
    d = (xa - xb).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (size <= eps * (1 + 1e-9) + 1e-12).all()


def _selection(ratio: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Points just past / just before the flip radius, plus random ones."""
    past = ((ratio > 0.95) & (ratio < 1.0)).nonzero().flatten()[:60]
    before = ((ratio > 1.0) & (ratio < 1.05)).nonzero().flatten()[:60]
    rand = torch.randperm(ratio.shape[0], generator=g)[:120]
    return torch.cat([past, before, rand])


def test_linf_exact_oracle_on_affine_models() -> None:
    g = torch.Generator().manual_seed(0)
    stats = {"ensemble": [0, 0], "default": [0, 0], "past": [0, 0]}
    for d, k in [(10, 5), (20, 3), (6, 10)]:
        m = affine(d, k, g)
        pool = torch.rand(3000, d, generator=g, dtype=DTYPE)
        r = linf_radius(m, pool)
        for eps in (0.01, 0.03, 0.1, 0.3):
            idx = _selection(r / eps, g)
            x = pool[idx]
            truth = linf_min_margin(m, x, eps) >= 0
            rob, adv = is_robust(m, x, eps=eps, ensemble=True, return_adv=True,
                                 generator=torch.Generator().manual_seed(1))
            check_evidence(m, x, rob, adv, eps, "linf")
            assert not (~rob & truth).any(), "flagged non-robust where the exact answer is robust"
            stats["ensemble"][0] += int((rob == truth).sum())
            stats["ensemble"][1] += len(idx)
            past = (r[idx] / eps > 0.95) & (r[idx] / eps < 1.0)
            stats["past"][0] += int((rob == truth)[past].sum())
            stats["past"][1] += int(past.sum())
            rob0 = is_robust(m, x, eps=eps, generator=torch.Generator().manual_seed(1))
            assert not (~rob0 & truth).any()
            stats["default"][0] += int((rob0 == truth).sum())
            stats["default"][1] += len(idx)
    frac = {key: a / b for key, (a, b) in stats.items()}
    print("linf oracle agreement", stats, frac)
    assert stats["past"][1] >= 300          # the hard points are really in the test
    assert frac["ensemble"] >= 0.99
    assert frac["past"] >= 0.99
    # APGD-CE alone (the paper's attack) misses some points just past the flip radius
    # (PITFALLS: weak attacks near the boundary), yet still agrees on most points.
    assert frac["default"] >= 0.85


def test_l2_exact_oracle_where_the_optimum_stays_in_the_box() -> None:
    g = torch.Generator().manual_seed(1)
    stats = {"ensemble": [0, 0], "past": [0, 0], "default": [0, 0]}
    for d, k in [(10, 5), (16, 4)]:
        m = affine(d, k, g)
        pool = 0.3 + 0.4 * torch.rand(3000, d, generator=g, dtype=DTYPE)   # ε ≤ 0.3 stays in the box
        with torch.no_grad():
            pred = m(pool).argmax(1)
            wd = m.weight[pred].unsqueeze(1) - m.weight.unsqueeze(0)
            mt = (wd * pool.unsqueeze(1)).sum(-1) + m.bias[pred].unsqueeze(1) - m.bias.unsqueeze(0)
            r = (mt / wd.norm(dim=-1)).scatter(1, pred.view(-1, 1), float("inf")).amin(1)
        for eps in (0.05, 0.1, 0.2, 0.3):
            idx = _selection(r / eps, g)
            x = pool[idx]
            # the unconstrained optimum x - ε ŵ_t of every pair lies inside the box
            assert (x.min() - eps >= 0) and (x.max() + eps <= 1)
            truth = r[idx] >= eps
            rob, adv = is_robust(m, x, eps=eps, norm="l2", ensemble=True, return_adv=True,
                                 generator=torch.Generator().manual_seed(2))
            check_evidence(m, x, rob, adv, eps, "l2")
            assert not (~rob & truth).any()
            stats["ensemble"][0] += int((rob == truth).sum())
            stats["ensemble"][1] += len(idx)
            past = (r[idx] / eps > 0.95) & (r[idx] / eps < 1.0)
            stats["past"][0] += int((rob == truth)[past].sum())
            stats["past"][1] += int(past.sum())
            rob0 = is_robust(m, x, eps=eps, norm="l2", generator=torch.Generator().manual_seed(2))
            stats["default"][0] += int((rob0 == truth).sum())
            stats["default"][1] += len(idx)
    frac = {key: a / b for key, (a, b) in stats.items()}
    print("l2 oracle agreement", stats, frac)
    assert stats["past"][1] >= 200
    assert frac["ensemble"] >= 0.99
    assert frac["past"] >= 0.99
    assert frac["default"] >= 0.8


@pytest.fixture(scope="module")
def gauss3_mlp() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    train = data.load("gauss3", "train")
    m = create("mlp", 3, in_features=2)
    opt = torch.optim.SGD(m.parameters(), lr=0.2, momentum=0.9)
    for _ in range(400):
        loss = torch.nn.functional.cross_entropy(m(train.x), train.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    test = data.load("gauss3", "test")
    with torch.no_grad():
        assert (m(test.x).argmax(1) == test.y).float().mean() > 0.95
    return m, test.x[:200]


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("linf", 0.12), ("l2", 0.1)])
def test_gauss3_mlp_dense_sampling_finds_no_missed_flip(gauss3_mlp, norm, eps) -> None:
    """A 41x41 grid over the 2-D ball (spacing ε/20) never flips a point is_robust calls
    robust. Tolerance: 1 % of the robust points (at least one): a flip region that only
    touches the ball in a sliver can lie where APGD's 40 steps do not go while a grid point
    happens to fall into it; the observed count is printed (0 in our runs)."""
    m, x = gauss3_mlp
    rob = is_robust(m, x, eps=eps, norm=norm, generator=torch.Generator().manual_seed(0))
    rob_ens = is_robust(m, x, eps=eps, norm=norm, ensemble=True, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(-1, 1, 41)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).view(-1, 2) * eps
    if norm == "l2":
        grid = grid[grid.norm(dim=1) <= eps]
    with torch.no_grad():
        pred = m(x).argmax(1)
        pts = (x.unsqueeze(1) + grid.unsqueeze(0)).clamp(0, 1)          # (N, G, 2), in ball ∩ box
        flips = (m(pts.view(-1, 2)).argmax(1).view(x.shape[0], -1) != pred.unsqueeze(1)).any(1)
    missed = int((rob & flips).sum())
    missed_ens = int((rob_ens & flips).sum())
    print(f"gauss3 {norm} eps={eps}: robust {int(rob.sum())}/{len(x)}, sampled flips {int(flips.sum())}, "
          f"missed by is_robust {missed}, by the ensemble {missed_ens}")
    assert missed_ens == 0 and not (rob_ens & ~rob).any()
    assert int((~rob).sum()) > 0 and int(rob.sum()) > 0     # a non-trivial case
    assert missed <= max(1, int(rob.sum()) // 100)

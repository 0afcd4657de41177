"""is_robust against exact answers: affine models (closed form, ℓ∞ and ℓ2), small ReLU
networks (exact minimal ℓ∞ radius in the box by mixed-integer linear programming) and a
trained gauss3 MLP (dense sampling of the 2-D ε-ball).

Boundary cases (issues 15, 24): ε = 0.9×, 1.02× and 1.1× a point's exact flip radius r. At
0.9r the prediction is robust, at 1.02r (the thin-sliver regime) and 1.1r a flip exists; the
default attack must agree on ≥ 99.5 % per family.

For an affine model f(x) = Wx + b on [0, 1]^d and a class pair (y, t) the margin
m_t(x') = (w_y - w_t)·x' + b_y - b_t is linear, so its minimum over B∞_ε(x) ∩ [0, 1]^d puts
every coordinate at the end of [max(0, x_i - ε), min(1, x_i + ε)] that lowers it; the
prediction y is robust iff min_t of these minima is >= 0. In ℓ2, when x - ε·ŵ_t stays in
the box for every t, the minimum is m_t(x) - ε·||w_y - w_t||.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from abstain import data
from abstain.attacks import DEFAULT_ATTACK, is_robust
from abstain.attacks.bounds import certified
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
    # rounding of x ± ε: float64 as before; float32 as in test_attacks_props
    rel, ab = (1e-9, 1e-12) if x.dtype == torch.float64 else (1e-5, 1e-7)
    assert (size <= eps * (1 + rel) + ab).all()


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
            rob, adv = is_robust(m, x, eps=eps, attack="ensemble", return_adv=True,
                                 generator=torch.Generator().manual_seed(1))
            check_evidence(m, x, rob, adv, eps, "linf")
            assert not (~rob & truth).any(), "flagged non-robust where the exact answer is robust"
            stats["ensemble"][0] += int((rob == truth).sum())
            stats["ensemble"][1] += len(idx)
            past = (r[idx] / eps > 0.95) & (r[idx] / eps < 1.0)
            stats["past"][0] += int((rob == truth)[past].sum())
            stats["past"][1] += int(past.sum())
            rob0 = is_robust(m, x, eps=eps, attack="apgd-ce", generator=torch.Generator().manual_seed(1))
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
            rob, adv = is_robust(m, x, eps=eps, norm="l2", attack="ensemble", return_adv=True,
                                 generator=torch.Generator().manual_seed(2))
            check_evidence(m, x, rob, adv, eps, "l2")
            assert not (~rob & truth).any()
            stats["ensemble"][0] += int((rob == truth).sum())
            stats["ensemble"][1] += len(idx)
            past = (r[idx] / eps > 0.95) & (r[idx] / eps < 1.0)
            stats["past"][0] += int((rob == truth)[past].sum())
            stats["past"][1] += int(past.sum())
            rob0 = is_robust(m, x, eps=eps, norm="l2", attack="apgd-ce", generator=torch.Generator().manual_seed(2))
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
    robust. Tolerance for APGD-CE: 1 % of the robust points (at least one): a flip region
    that only touches the ball in a sliver can lie where APGD's 40 steps do not go while a
    grid point happens to fall into it; the observed count is printed (0 in our runs).
    The default attack and the ensemble miss none."""
    m, x = gauss3_mlp
    rob = is_robust(m, x, eps=eps, norm=norm, attack="apgd-ce", generator=torch.Generator().manual_seed(0))
    rob_def = is_robust(m, x, eps=eps, norm=norm, generator=torch.Generator().manual_seed(0))
    rob_ens = is_robust(m, x, eps=eps, norm=norm, attack="ensemble", generator=torch.Generator().manual_seed(0))
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
    assert int((rob_def & flips).sum()) == 0
    print(f"gauss3 {norm} eps={eps}: robust {int(rob.sum())}/{len(x)}, sampled flips {int(flips.sum())}, "
          f"missed by is_robust {missed}, by the ensemble {missed_ens}")
    assert missed_ens == 0 and not (rob_ens & ~rob).any()
    assert int((~rob).sum()) > 0 and int(rob.sum()) > 0     # a non-trivial case
    assert missed <= max(1, int(rob.sum()) // 100)


# ----------------------------------------------------------------------------- boundary cases
FACTORS = (0.9, 1.02, 1.1)


def per_point(m, x, r, norm, attack, factors=FACTORS):
    """is_robust of each point at ε = f·r_i for f in ``factors`` (one call per point and
    factor, since ε differs); checks the evidence of every flag. Returns {f: agreement}."""
    agree = {}
    for f in factors:
        n = 0
        for i in range(x.shape[0]):
            eps = float(f * r[i])
            xi = x[i:i + 1]
            rob, adv = is_robust(m, xi, eps=eps, norm=norm, attack=attack, return_adv=True,
                                 generator=torch.Generator().manual_seed(i))
            check_evidence(m, xi, rob, adv, eps, norm)
            n += int(bool(rob) == (f < 1))
        agree[f] = n
    return agree


def report(name, counts, total):
    print(name, {a: {f: f"{c}/{total} ({100 * c / total:.1f}%)" for f, c in v.items()} for a, v in counts.items()})


def image_affine(k: int, g: torch.Generator) -> torch.nn.Module:
    """A k-class affine model on 1x8x8 images (as the issue's cases)."""
    return torch.nn.Sequential(torch.nn.Flatten(), affine(64, k, g)).eval()


def test_linf_boundary_cases_affine() -> None:
    """ℓ∞, exact radius from the closed form; image-shaped and vector inputs."""
    g = torch.Generator().manual_seed(10)
    counts: dict[str, dict[float, int]] = {DEFAULT_ATTACK: {f: 0 for f in FACTORS}, "apgd-ce": {1.1: 0}}
    total = 0
    for make, shape in [(lambda: image_affine(6, g), (1, 8, 8)), (lambda: affine(10, 10, g), (10,)),
                        (lambda: affine(20, 4, g), (20,))]:
        m = make()
        x = torch.rand((400,) + shape, generator=g, dtype=DTYPE)
        lin = m[-1] if isinstance(m, torch.nn.Sequential) else m
        r = linf_radius(lin, x.flatten(1))
        keep = (torch.isfinite(r) & (r > 1e-3)).nonzero().flatten()[:60]
        x, r = x[keep], r[keep]
        total += x.shape[0]
        for a in counts:
            for f, c in per_point(m, x, r, "linf", a, tuple(counts[a])).items():
                counts[a][f] += c
    report("linf affine boundary agreement", counts, total)
    assert total >= 150
    for f in FACTORS:
        assert counts[DEFAULT_ATTACK][f] >= 0.995 * total
    # the paper's attack misses flips just past the radius (PITFALLS: weak attacks)
    assert counts["apgd-ce"][1.1] < counts[DEFAULT_ATTACK][1.1]


@torch.no_grad()
def l2_radius_in_box(m: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Exact ℓ2 flip radius within [0, 1]^d of an affine model.

    For a pair (y, t) with a = w_t - w_y and margin μ = (w_y - w_t)·x + b_y - b_t > 0 the
    smallest ||δ||_2 with a·δ ≥ μ and x + δ in the box is, by the KKT conditions of this
    convex problem, δ(λ) = clip(λa, -x, 1 - x) at the smallest λ ≥ 0 with a·δ(λ) = μ
    (a·δ(λ) is non-decreasing in λ; found by bisection). Infeasible pairs give inf."""
    pred = m(x).argmax(1)
    a = m.weight.unsqueeze(0) - m.weight[pred].unsqueeze(1)                 # (N, K, d)
    mu = (m.bias[pred].unsqueeze(1) - m.bias.unsqueeze(0)) - (a * x.unsqueeze(1)).sum(-1)
    lo, hi = (-x).unsqueeze(1), (1 - x).unsqueeze(1)

    def reach(lam):
        return (a * torch.minimum(torch.maximum(lam.unsqueeze(-1) * a, lo), hi)).sum(-1)

    big = torch.full(mu.shape, 1e6, dtype=DTYPE)
    feasible = reach(big) >= mu
    l, h = torch.zeros_like(mu), big
    for _ in range(200):
        mid = (l + h) / 2
        ok = reach(mid) >= mu
        h, l = torch.where(ok, mid, h), torch.where(ok, l, mid)
    delta = torch.minimum(torch.maximum(h.unsqueeze(-1) * a, lo), hi)
    r = torch.where(feasible, delta.norm(dim=-1), torch.full_like(mu, float("inf")))
    return r.scatter(1, pred.view(-1, 1), float("inf")).amin(1)


def test_l2_radius_in_box_matches_the_interior_formula() -> None:
    g = torch.Generator().manual_seed(11)
    m = affine(8, 4, g)
    x = 0.45 + 0.1 * torch.rand(200, 8, generator=g, dtype=DTYPE)
    with torch.no_grad():
        pred = m(x).argmax(1)
        wd = m.weight[pred].unsqueeze(1) - m.weight.unsqueeze(0)
        mt = (wd * x.unsqueeze(1)).sum(-1) + m.bias[pred].unsqueeze(1) - m.bias.unsqueeze(0)
        r_free = (mt / wd.norm(dim=-1)).scatter(1, pred.view(-1, 1), float("inf")).amin(1)
    r = l2_radius_in_box(m, x)
    inside = r_free < 0.4        # the free optimum stays in the box
    assert inside.sum() > 20
    assert torch.allclose(r[inside], r_free[inside], rtol=1e-9)
    assert (r >= r_free - 1e-12).all()   # the box only makes the radius larger


def test_l2_boundary_cases_affine() -> None:
    """ℓ2, exact radius in the box (the optimum may touch the box)."""
    g = torch.Generator().manual_seed(12)
    counts: dict[str, dict[float, int]] = {DEFAULT_ATTACK: {f: 0 for f in FACTORS}, "apgd-ce": {1.1: 0}}
    total = 0
    for d, k in [(10, 5), (16, 6), (64, 10)]:
        m = affine(d, k, g)
        x = torch.rand(400, d, generator=g, dtype=DTYPE)
        r = l2_radius_in_box(m, x)
        keep = (torch.isfinite(r) & (r > 1e-3)).nonzero().flatten()[:60]
        x, r = x[keep], r[keep]
        total += x.shape[0]
        for a in counts:
            for f, c in per_point(m, x, r, "l2", a, tuple(counts[a])).items():
                counts[a][f] += c
    report("l2 affine boundary agreement", counts, total)
    assert total >= 150
    for f in FACTORS:
        assert counts[DEFAULT_ATTACK][f] >= 0.995 * total
    assert counts["apgd-ce"][1.1] < counts[DEFAULT_ATTACK][1.1]


# ----------------------------------------------------------------------------- ReLU networks: MILP
def relu_mlp(d: int, hidden: tuple[int, ...], k: int, g: torch.Generator) -> torch.nn.Sequential:
    """A random ReLU MLP whose logits are centred on the box, so every class is predicted."""
    layers: list[torch.nn.Module] = []
    w = d
    for h in hidden:
        layers += [torch.nn.Linear(w, h), torch.nn.ReLU()]
        w = h
    layers.append(torch.nn.Linear(w, k))
    m = torch.nn.Sequential(*layers).to(DTYPE)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DTYPE) / (p.shape[-1] ** 0.5 if p.dim() == 2 else 2))
        m[-1].bias -= m(torch.rand(4096, d, generator=g, dtype=DTYPE)).mean(0)
    return m.eval()


def _interval_preacts(lins, lo: np.ndarray, hi: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for lin in lins[:-1]:
        w, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        zl, zu = w @ mid + b - np.abs(w) @ rad, w @ mid + b + np.abs(w) @ rad
        out.append((zl, zu))
        lo, hi = np.maximum(zl, 0), np.maximum(zu, 0)
    return out


def milp_radius_to(lins, x: np.ndarray, y: int, t: int, upper: float) -> float | None:
    """min r s.t. some x' in B∞_r(x) ∩ [0, 1]^d, r ≤ upper, has z_t(x') ≥ z_y(x') (None:
    none within ``upper``). ReLUs in the exact big-M form with binaries s:
    a ≥ ẑ, a ≥ 0, a ≤ ẑ - l(1 - s), a ≤ u·s, with [l, u] the interval bounds of ẑ over
    B∞_upper(x) ∩ box (stable neurons fixed); solved by HiGHS to optimality."""
    d = x.size
    pre = _interval_preacts(lins, np.clip(x - upper, 0, 1), np.clip(x + upper, 0, 1))
    nv = d + 1 + sum(3 * zl.size for zl, _ in pre)
    rows, cols, vals, rlo, rhi = [], [], [], [], []

    def con(coef: dict[int, float], lo: float, hi: float) -> None:
        r = len(rlo)
        for c, v in coef.items():
            rows.append(r)
            cols.append(c)
            vals.append(v)
        rlo.append(lo)
        rhi.append(hi)

    vlo, vhi, integ = np.full(nv, -np.inf), np.full(nv, np.inf), np.zeros(nv)
    vlo[:d], vhi[:d] = np.clip(x - upper, 0, 1), np.clip(x + upper, 0, 1)
    vlo[d], vhi[d] = 0.0, upper
    for i in range(d):                          # |x'_i - x_i| ≤ r
        con({i: 1.0, d: -1.0}, -np.inf, x[i])
        con({i: 1.0, d: 1.0}, x[i], np.inf)
    prev, at = list(range(d)), d + 1
    for lin, (zl, zu) in zip(lins[:-1], pre):
        w, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
        h = zl.size
        iz, ia, i_s = at, at + h, at + 2 * h
        at += 3 * h
        for j in range(h):
            coef = {p: float(w[j, q]) for q, p in enumerate(prev)}
            coef[iz + j] = -1.0
            con(coef, -b[j], -b[j])
            vlo[iz + j], vhi[iz + j] = zl[j], zu[j]
            vlo[ia + j], vhi[ia + j] = max(zl[j], 0.0), max(zu[j], 0.0)
            vlo[i_s + j], vhi[i_s + j], integ[i_s + j] = 0, 1, 1
            if zu[j] <= 0:
                con({ia + j: 1.0}, 0.0, 0.0)
            elif zl[j] >= 0:
                con({ia + j: 1.0, iz + j: -1.0}, 0.0, 0.0)
            else:
                con({ia + j: 1.0, iz + j: -1.0}, 0.0, np.inf)
                con({ia + j: 1.0, iz + j: -1.0, i_s + j: -zl[j]}, -np.inf, -zl[j])
                con({ia + j: 1.0, i_s + j: -zu[j]}, -np.inf, 0.0)
        prev = list(range(ia, ia + h))
    w, b = lins[-1].weight.detach().numpy(), lins[-1].bias.detach().numpy()
    con({p: float(w[t, q] - w[y, q]) for q, p in enumerate(prev)}, b[y] - b[t], np.inf)
    a = coo_matrix((vals, (rows, cols)), shape=(len(rlo), nv)).tocsr()
    cost = np.zeros(nv)
    cost[d] = 1.0
    res = milp(cost, constraints=LinearConstraint(a, np.array(rlo), np.array(rhi)), integrality=integ,
               bounds=Bounds(vlo, vhi), options={"mip_rel_gap": 1e-9})
    if res.status == 2:
        return None
    assert res.status == 0, res.message
    return float(res.x[d])


def milp_radius(m: torch.nn.Sequential, x: torch.Tensor, upper: float) -> float | None:
    """Exact minimal ℓ∞ flip radius of ``x`` (≤ ``upper``, else None): the minimum over the
    targets, each solved with the best radius so far as its upper bound (tighter big-M)."""
    lins = [layer for layer in m if isinstance(layer, torch.nn.Linear)]
    with torch.no_grad():
        z = m(x[None])[0]
    y = int(z.argmax())
    best = None
    for t in z.argsort(descending=True).tolist():
        if t != y:
            r = milp_radius_to(lins, x.numpy(), y, t, upper if best is None else best)
            if r is not None and (best is None or r < best):
                best = r
    return best


def test_milp_radius_is_exact_on_an_affine_model() -> None:
    """Cross-check of the MILP encoding: without hidden layers it must match the closed form."""
    g = torch.Generator().manual_seed(13)
    lin = affine(6, 4, g)
    x = torch.rand(20, 6, generator=g, dtype=DTYPE)
    r = linf_radius(lin, x)
    for i in range(20):
        got = milp_radius(torch.nn.Sequential(lin), x[i], 1.0)
        assert (got is None) == (not torch.isfinite(r[i]))
        if got is not None:
            assert abs(got - float(r[i])) < 1e-7


def upper_radius(m: torch.nn.Module, x: torch.Tensor, top: float = 0.5) -> torch.Tensor:
    """An upper bound of each point's flip radius proved by an attack: the ℓ∞ size of the
    smallest verified adversarial input found on a geometric grid of radii (``top`` if none)."""
    up = torch.full((x.shape[0],), top, dtype=DTYPE)
    for e in torch.logspace(-2.5, float(np.log10(top)), 10, dtype=DTYPE).tolist():
        rob, adv = is_robust(m, x, eps=e, return_adv=True, generator=torch.Generator().manual_seed(0))
        up = torch.where(~rob, torch.minimum(up, (adv - x).abs().flatten(1).amax(1)), up)
    return up


def test_relu_boundary_cases_against_milp() -> None:
    """Small ReLU networks, ℓ∞: the exact minimal radius r within the box by MILP; the
    default attack agrees at 0.9r and 1.1r on ≥ 99 % of the cases; no sound bound proves a
    point robust at 1.1r, where a flip exists."""
    g = torch.Generator().manual_seed(14)
    counts: dict[str, dict[float, int]] = {DEFAULT_ATTACK: {f: 0 for f in FACTORS}, "apgd-ce": {1.1: 0}}
    total = 0
    for d, hidden, k, n in [(12, (24,), 6, 60), (8, (16, 16), 4, 50), (10, (16,), 5, 60)]:
        m = relu_mlp(d, hidden, k, g)
        x = torch.rand(n, d, generator=g, dtype=DTYPE)
        up = upper_radius(m, x)
        rs = [milp_radius(m, x[i], float(up[i])) for i in range(n)]
        keep = [i for i, r in enumerate(rs) if r is not None and r > 1e-3]
        xk, r = x[keep], torch.tensor([rs[i] for i in keep], dtype=DTYPE)
        total += len(keep)
        with torch.no_grad():
            pred = m(xk).argmax(1)
            z = m(xk)
        for i in range(len(keep)):   # soundness of the skipping: nothing proven where a flip exists
            cert = certified(m, xk[i:i + 1], pred[i:i + 1], z[i:i + 1], 1.1 * float(r[i]), "linf")
            assert cert is not None and not bool(cert)
        for a in counts:
            for f, c in per_point(m, xk, r, "linf", a, tuple(counts[a])).items():
                counts[a][f] += c
    report("relu milp boundary agreement", counts, total)
    assert total >= 140
    agree = sum(counts[DEFAULT_ATTACK].values())
    assert counts[DEFAULT_ATTACK][0.9] == total      # a robust point is never flagged
    # issue 24: ≥ 99.5 % over 0.9r, 1.02r (the thin-sliver regime) and 1.1r (505 of 507:
    # the case left flips only from ~0.2 % of the ball's vertices, at 1.02r and 1.1r)
    assert agree >= 0.995 * len(FACTORS) * total
    assert counts[DEFAULT_ATTACK][1.1] >= total - 1 and counts[DEFAULT_ATTACK][1.02] >= total - 1
    assert counts["apgd-ce"][1.1] < 0.9 * total      # the cases are hard for the paper's attack

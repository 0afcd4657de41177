"""Start diversity of the strong attack (issue 24): extra random starts on thin points only.

A model built so that its flip region is a thin sliver near one vertex of the ε-ball, while
the gradient at the centre points to the opposite vertex (a decoy that comes within 5 % of
the clean margin of a flip and never flips); the points that survive with a large margin
get no extra run; random vertices are vertices of the ball ∩ box.
"""
from __future__ import annotations

import torch
from torch import nn

from abstain.attacks import is_robust
from abstain.attacks.core import frozen_eval
from abstain.attacks.diversity import EXTRA, THIN, VERY_THIN, margin_to_flip, random_vertex, thin
from abstain.attacks.strong import strong_candidates

DT = torch.float64


class Sliver(nn.Module):
    """Three classes on [0, 1]^d around the centre c = 0.5 with the ball radius ``eps``.

    With the projection ``p = v·(x' - c) / (d ε) ∈ [-1, 1]`` on the ℓ∞ ball (p = 1 only at
    the vertex c + ε v): ``z_0 = 0``, ``z_2 = -5`` and
    ``z_1 = -1 - 0.95 p + k·relu(p - θ)`` with ``k = 1.96 / (1 - θ)``, so ``z_1(c) = -1``
    (clean margin 1), the decoy vertex ``c - ε v`` reaches ``z_1 = -0.05`` (margin 0.05: thin)
    and only ``p > 1 - 0.01 / (k - 0.95)`` (≈ 0.995) flips to class 1: a thin sliver at the
    vertex ``c + ε v`` (margin 0.01 there). The gradient at c points to the decoy, so the
    linearised corner and every run from it stay there; a start with ``p > θ`` flips.
    """

    def __init__(self, d: int, eps: float, theta: float, g: torch.Generator) -> None:
        super().__init__()
        self.d, self.eps, self.theta = d, eps, theta
        self.register_buffer("v", torch.where(torch.rand(d, generator=g) < 0.5, -1.0, 1.0).to(DT))
        self.k = 1.96 / (1 - theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = ((x.flatten(1) - 0.5) * self.v).sum(1) / (self.d * self.eps)
        z1 = -1 - 0.95 * p + self.k * torch.relu(p - self.theta)
        return torch.stack([torch.zeros_like(z1), z1, torch.full_like(z1, -5.0)], dim=1)


def test_a_thin_sliver_near_a_vertex_is_found_by_the_extra_starts() -> None:
    g = torch.Generator().manual_seed(0)
    d, eps, n = 4, 0.1, 200
    m = Sliver(d, eps, 0.05, g).eval()
    x = torch.full((n, d), 0.5, dtype=DT)     # one point, n independent trials (sample ids)
    ids = torch.arange(n)
    with torch.no_grad():
        z = m(x)
        pred = z.argmax(1)
        vertex = x + eps * m.v
        assert (pred == 0).all() and (m(vertex).argmax(1) == 1).all()        # a flip exists
        # the sliver is thin: moving one coordinate of the vertex by ε/4 leaves it
        near = vertex.clone()
        near[:, 0] -= 0.25 * eps * m.v[0]
        assert (m(near).argmax(1) == 0).all()
        assert abs(float(margin_to_flip(m(x - eps * m.v), pred)[0]) - 0.05) < 1e-9   # decoy
    with frozen_eval(m):
        off, _ = strong_candidates(m, x, pred, z, eps=eps, norm="linf", steps=40, ids=ids, seed=3,
                                   diversity=False)
        on, _ = strong_candidates(m, x, pred, z, eps=eps, norm="linf", steps=40, ids=ids, seed=3)
    with torch.no_grad():
        found_off = float((m(off).argmax(1) != pred).double().mean())
        found_on = float((m(on).argmax(1) != pred).double().mean())
    rob = is_robust(m, x, eps=eps, sample_ids=ids, generator=torch.Generator().manual_seed(3))
    print(f"sliver: found without extra starts {found_off:.3f}, with {found_on:.3f}, "
          f"is_robust finds {1 - float(rob.double().mean()):.3f}")
    # one random start (the PLAN's) reaches p > θ on about 45 % of the trials; the extra
    # starts (6 towards the top-ranked class, half of them random vertices) nearly always
    assert found_off < 0.75
    assert found_on >= 0.95
    assert 1 - float(rob.double().mean()) >= 0.95


class Counter(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.cost = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.cost += x.shape[0] * (3 if torch.is_grad_enabled() and x.requires_grad else 1)
        return self.model(x)


def test_points_with_a_large_margin_get_nothing_extra() -> None:
    """On the sliver model at a radius where the attack cannot come near a flip (ε/10: best
    margin ≥ 0.9 of the clean margin), turning diversity on costs nothing."""
    g = torch.Generator().manual_seed(1)
    m = Counter(Sliver(4, 0.1, 0.05, g).eval())
    x = torch.full((20, 4), 0.5, dtype=DT)
    with torch.no_grad():
        z = m(x)
    pred = z.argmax(1)
    costs = []
    for div in (False, True):
        m.cost = 0
        with frozen_eval(m):
            c, _ = strong_candidates(m, x, pred, z, eps=0.01, norm="linf", steps=40, ids=torch.arange(20),
                                     diversity=div)
        costs.append(m.cost)
        with torch.no_grad():
            best = margin_to_flip(m(c), pred)
        assert not thin(best, z, pred).any()
    assert costs[0] == costs[1]


def test_thin_rule_is_relative_to_the_clean_margin() -> None:
    z = torch.tensor([[3.0, 1.0, 0.0], [3.0, 1.0, 0.0], [0.0, 2.0, -1.0]], dtype=DT)
    pred = z.argmax(1)
    best = torch.tensor([THIN * 2.0, THIN * 2.0 + 1e-6, float("nan")], dtype=DT)
    assert thin(best, z, pred).tolist() == [True, False, True]
    assert thin(best * 1e30, z * 1e30, pred).tolist() == [True, False, True]      # scale-free
    assert len(EXTRA) == 24 and {r for r, _, _ in EXTRA} == set(range(9))
    assert sum(lim == THIN for _, _, lim in EXTRA) == 12       # the rest only where very thin
    # the 4th- to 9th-ranked classes: once each, only where very thin
    assert sorted(r for r, _, lim in EXTRA if r >= 3 and lim == VERY_THIN) == list(range(3, 9))


def test_random_vertices_are_vertices_of_the_ball_in_the_box() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(50, 1, 4, 4, generator=g, dtype=DT)
    v = random_vertex(x, 0.2, "linf", 7, torch.arange(50))
    lo, hi = (x - 0.2).clamp(min=0), (x + 0.2).clamp(max=1)
    assert ((v == lo) | (v == hi)).all()
    assert torch.equal(v[10:20], random_vertex(x[10:20], 0.2, "linf", 7, torch.arange(10, 20)))   # per sample
    assert not torch.equal(v, random_vertex(x, 0.2, "linf", 8, torch.arange(50)))
    s = random_vertex(x, 0.2, "l2", 7, torch.arange(50))
    assert ((s - x).flatten(1).norm(dim=1) <= 0.2 + 1e-12).all() and s.min() >= 0 and s.max() <= 1

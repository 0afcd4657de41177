"""The default attack (``attack="strong"``) and the sound margin bounds it skips points with.

Agreement with exact oracles near the boundary is tested in test_attacks_oracle.py; here:
soundness of the bounds, evidence of every flag, batch independence, modes, cost in
forward/backward passes relative to APGD-CE, and the API (names, errors, defaults).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from abstain.attacks import ATTACKS, DEFAULT_ATTACK, apgd, is_robust
from abstain.attacks.bounds import certified, margin_lower_bound
from abstain.attacks.strong import MAX_TARGETS, linear_corner, strong_candidates
from abstain.errors import InputError
from abstain.evaluation import evaluate
from abstain.models import Normalize, create
from abstain.selectors.eri import RobustnessIndicator
from test_attacks_oracle import affine, check_evidence, linf_min_margin

DT = torch.float64


def mlp(d: int, k: int, g: torch.Generator, hidden: int = 16) -> nn.Sequential:
    m = nn.Sequential(Normalize((0.5,), (0.3,)), nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(),
                      nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, k)).to(DT)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DT) / (p.shape[-1] ** 0.5 if p.dim() == 2 else 3))
    return m.eval()


def bn_cnn(k: int, g: torch.Generator) -> nn.Sequential:
    torch.manual_seed(int(torch.randint(0, 1000, (1,), generator=g)))
    m = nn.Sequential(Normalize((0.4, 0.5), (0.2, 0.3)), nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6),
                      nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 4 * 4, k)).to(DT)
    with torch.no_grad():
        bn = m[2]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(-1.5, 1.5)      # negative scales too
    return m.eval()


class Residual(nn.Module):
    """A model the bounds do not support (a gated skip connection: the product of two
    bounded values): nothing may be skipped."""

    def __init__(self, d: int, k: int, g: torch.Generator) -> None:
        super().__init__()
        self.a = affine(d, d, g)
        self.b = affine(d, k, g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(x * torch.relu(self.a(x)))


def ball_points(x: torch.Tensor, eps: float, norm: str, n: int, g: torch.Generator) -> torch.Tensor:
    """n random points of B^p_ε(x) ∩ box per sample (corners included for ℓ∞): (n, N, ...)."""
    if norm == "linf":
        u = torch.rand((n,) + x.shape, generator=g, dtype=x.dtype) * 2 - 1
        u[: n // 2] = u[: n // 2].sign()          # vertices of the ball
        pts = x + eps * u
    else:
        v = torch.randn((n,) + x.shape, generator=g, dtype=x.dtype)
        v = v / v.flatten(2).norm(dim=2).view((n, -1) + (1,) * (x.dim() - 1))
        pts = x + eps * v * torch.rand((n, x.shape[0]) + (1,) * (x.dim() - 1), generator=g, dtype=x.dtype)
    return pts.clamp(0, 1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("kind", ["mlp", "bn_cnn", "affine"])
def test_margin_bound_is_sound(kind: str, norm: str) -> None:
    """The lower bound never exceeds the margin at sampled points of the ball ∩ box nor at
    the points an attack on the margin finds."""
    g = torch.Generator().manual_seed(0)
    if kind == "mlp":
        m, x = mlp(6, 4, g), torch.rand(40, 6, generator=g, dtype=DT)
    elif kind == "bn_cnn":
        m, x = bn_cnn(5, g), torch.rand(40, 2, 8, 8, generator=g, dtype=DT)
    else:
        m, x = affine(7, 5, g), torch.rand(40, 7, generator=g, dtype=DT)
    with torch.no_grad():
        pred = m(x).argmax(1)
    for eps in (0.01, 0.05, 0.2):
        lb = margin_lower_bound(m, x, pred, eps, norm)
        assert lb is not None and lb.shape == (40,)
        pts = ball_points(x, eps, norm, 64, g)
        adv = apgd(m, x, pred, eps=eps, norm=norm, loss="margin", steps=20, early_stop=False,
                   generator=torch.Generator().manual_seed(1))
        pts = torch.cat([pts, adv.unsqueeze(0)])
        with torch.no_grad():
            z = m(pts.flatten(0, 1)).view(pts.shape[0], 40, -1)
        y = pred.view(1, -1, 1).expand(pts.shape[0], -1, 1)
        margin = (z.gather(2, y) - z.scatter(2, y, float("-inf")).amax(2, keepdim=True)).squeeze(2)
        assert (lb.unsqueeze(0) <= margin.amin(0) + 1e-9).all()


def test_margin_bound_is_exact_for_affine_models() -> None:
    """ℓ∞: the elided last layer makes the bound the exact minimum (closed form); ℓ2: in the
    interior it is the exact m - ε·||w_y - w_t||."""
    g = torch.Generator().manual_seed(1)
    m = affine(9, 6, g)
    x = torch.rand(100, 9, generator=g, dtype=DT)
    with torch.no_grad():
        pred = m(x).argmax(1)
    for eps in (0.02, 0.1, 0.4):
        lb = margin_lower_bound(m, x, pred, eps, "linf")
        assert torch.allclose(lb, linf_min_margin(m, x, eps), atol=1e-12)
    xi = 0.4 + 0.2 * torch.rand(100, 9, generator=g, dtype=DT)
    with torch.no_grad():
        pred = m(xi).argmax(1)
        wd = m.weight[pred].unsqueeze(1) - m.weight.unsqueeze(0)
        mt = (wd * xi.unsqueeze(1)).sum(-1) + m.bias[pred].unsqueeze(1) - m.bias.unsqueeze(0)
        exact = (mt - 0.1 * wd.norm(dim=-1)).scatter(1, pred.view(-1, 1), float("inf")).amin(1)
    assert torch.allclose(margin_lower_bound(m, xi, pred, 0.1, "l2"), exact, atol=1e-12)


def test_unsupported_models_prove_nothing_and_are_still_attacked() -> None:
    g = torch.Generator().manual_seed(2)
    m = Residual(6, 4, g).eval()
    x = torch.rand(30, 6, generator=g, dtype=DT)
    with torch.no_grad():
        z = m(x)
    assert margin_lower_bound(m, x, z.argmax(1), 0.05) is None
    assert certified(m, x, z.argmax(1), z, 0.05) is None
    for eps in (0.02, 0.3):
        rob, adv = is_robust(m, x, eps=eps, return_adv=True)
        check_evidence(m, x, rob, adv, eps, "linf")
    assert (~rob).any()


def test_proven_points_are_skipped_without_gradients() -> None:
    """Affine model, small ε: the bound proves every point robust; the attack then takes
    no gradient and returns x."""
    g = torch.Generator().manual_seed(3)
    m = affine(5, 3, g)
    x = torch.rand(50, 5, generator=g, dtype=DT)
    with torch.no_grad():
        z = m(x)
    pred = z.argmax(1)
    eps = 0.5 * float(linf_radius_min(m, x))
    grads = []
    h = m.register_forward_hook(lambda mod, i, o: grads.append(torch.is_grad_enabled() and i[0].requires_grad))
    cand, proven = strong_candidates(m, x, pred, z, eps=eps, norm="linf", steps=40, ids=torch.arange(50))
    h.remove()
    assert proven.all() and torch.equal(cand, x) and not any(grads)
    assert is_robust(m, x, eps=eps).all()


def linf_radius_min(m: nn.Linear, x: torch.Tensor) -> float:
    from test_attacks_oracle import linf_radius

    return float(linf_radius(m, x).min())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_flag_has_evidence_on_images_vectors_and_single_samples(norm: str) -> None:
    g = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    cnn = create("cnn", 10).eval()
    xs = [(cnn, torch.rand(12, 1, 8, 8, generator=g)), (cnn, torch.rand(1, 1, 8, 8, generator=g)),
          (mlp(6, 2, g).float(), torch.rand(25, 6, generator=g)),            # two classes: one target
          (mlp(6, 4, g).float(), torch.rand(1, 6, generator=g))]
    for m, x in xs:
        for eps in ((0.03, 0.3) if norm == "linf" else (0.2, 1.5)):
            rob, adv = is_robust(m, x, eps=eps, norm=norm, return_adv=True)
            assert rob.shape == (x.shape[0],) and rob.dtype == torch.bool and adv.shape == x.shape
            check_evidence(m, x, rob, adv, eps, norm)
    assert is_robust(cnn, xs[0][1], eps=0.0).all()


def _valid_points(m, x: torch.Tensor, adv: torch.Tensor, rob: torch.Tensor, eps: float) -> None:
    """The returned points lie in the ε-ball and the box, and flip exactly the non-robust samples."""
    assert ((adv - x).abs() <= eps + 1e-12).all() and (adv >= 0).all() and (adv <= 1).all()
    with torch.no_grad():
        flipped = m(adv).argmax(1) != m(x).argmax(1)
    assert torch.equal(flipped, ~rob)


def test_results_do_not_depend_on_the_batch() -> None:
    """The verdict of a sample is the same alone, in any batch, in any order; the points are
    compared by what they must satisfy (in the ball and box, flipping exactly the non-robust
    samples), not bitwise: the kernels of another CPU may round differently per batch shape."""
    g = torch.Generator().manual_seed(5)
    m = mlp(8, 5, g)
    x = torch.rand(40, 8, generator=g, dtype=DT)
    ids = torch.arange(100, 140)
    eps = 0.08
    rob, adv = is_robust(m, x, eps=eps, return_adv=True, sample_ids=ids, generator=torch.Generator().manual_seed(9))
    assert (~rob).any() and rob.any()
    perm = torch.randperm(40, generator=g)
    rob_p, adv_p = is_robust(m, x[perm], eps=eps, return_adv=True, sample_ids=ids[perm],
                             generator=torch.Generator().manual_seed(9))
    assert torch.equal(rob_p, rob[perm])
    _valid_points(m, x, adv, rob, eps)
    _valid_points(m, x[perm], adv_p, rob_p, eps)
    for i in (0, 7, 39):
        r1, a1 = is_robust(m, x[i:i + 1], eps=eps, return_adv=True, sample_ids=ids[i:i + 1],
                           generator=torch.Generator().manual_seed(9))
        assert bool(r1) == bool(rob[i])
        _valid_points(m, x[i:i + 1], a1, r1, eps)


def test_modes_and_flags_are_restored_and_results_match_eval_mode() -> None:
    g = torch.Generator().manual_seed(6)
    m = bn_cnn(4, g)
    x = torch.rand(16, 2, 8, 8, generator=g, dtype=DT)
    ref = is_robust(m, x, eps=0.05)
    m.train()
    m[1].weight.requires_grad_(False)
    stats = m[2].running_mean.clone()
    got = is_robust(m, x, eps=0.05)
    assert torch.equal(got, ref)
    assert m.training and m[2].training
    assert not m[1].weight.requires_grad and m[6].weight.requires_grad
    assert torch.equal(m[2].running_mean, stats)      # no BatchNorm update while attacking


class Counter(nn.Module):
    """Counts the work of a wrapped model in forward-pass equivalents, per sample: a forward
    pass costs 1 and every backward pass through its output 2 (≈ 2 forwards), so a
    forward-backward costs 3 and one forward with J backward passes through its graph 1 + 2J."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.cost = 0

    def _backward(self, n: int) -> None:
        self.cost += 2 * n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        n = int(x.shape[0])
        self.cost += n
        if out.requires_grad:
            out.register_hook(lambda g: self._backward(n))
        return out


def test_cost_on_robust_points_is_at_most_twice_apgd_ce() -> None:
    """Machine-independent cost: on points that stay robust (every step runs) and are not
    proven (the wrapper hides the layers from the bounds), the default attack does at most
    2x the forward/backward work of 40-step APGD-CE, with K = 10 (the most targets)."""
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    m = Counter(create("cnn", 10).eval())
    x = torch.rand(64, 1, 8, 8, generator=g)
    rob = is_robust(m, x, eps=0.002, attack="apgd-ce")
    x = x[rob]
    assert x.shape[0] >= 50
    m.cost = 0
    assert is_robust(m, x, eps=0.002, attack="apgd-ce").all()
    c_apgd = m.cost
    m.cost = 0
    assert is_robust(m, x, eps=0.002).all()
    c_strong = m.cost
    print(f"cost on robust points: strong {c_strong}, apgd-ce {c_apgd}, ratio {c_strong / c_apgd:.3f}")
    assert MAX_TARGETS == 9 and c_strong <= 2.0 * c_apgd


def test_linear_corner_maximises_the_linearisation() -> None:
    g = torch.Generator().manual_seed(8)
    x = torch.rand(20, 7, generator=g, dtype=DT)
    grad = torch.randn(20, 7, generator=g, dtype=DT)
    grad[:, 0] = 0
    c = linear_corner(x, grad, 0.1, "linf")
    assert torch.equal(c[:, 0], x[:, 0])
    pts = ball_points(x, 0.1, "linf", 200, g)
    assert ((grad * (pts - x)).sum(-1) <= (grad * (c - x)).sum(-1) + 1e-12).all()
    c2 = linear_corner(x, grad, 0.1, "l2")
    assert ((c2 - x).norm(dim=1) <= 0.1 + 1e-12).all() and c2.min() >= 0 and c2.max() <= 1


def test_attack_names_defaults_and_errors() -> None:
    g = torch.Generator().manual_seed(9)
    m = mlp(5, 3, g).float()
    x = torch.rand(6, 5, generator=g)
    assert DEFAULT_ATTACK == "strong" and set(ATTACKS) == {"strong", "apgd-ce", "ensemble"}
    with pytest.raises(InputError, match="unknown attack"):
        is_robust(m, x, eps=0.1, attack="pgd")
    with pytest.raises(TypeError):         # the legacy ensemble= flag is gone: attack="ensemble"
        is_robust(m, x, eps=0.1, ensemble=True)
    ds = torch.utils.data.TensorDataset(x, torch.zeros(6, dtype=torch.long))
    with pytest.raises(InputError, match="unknown attack"):
        evaluate(m, ds, eps=0.1, attack="nope", device="cpu", show_progress=False)
    res = evaluate(m, ds, eps=0.3, device="cpu", show_progress=False, double_eps=False)
    assert torch.equal(torch.as_tensor(res["robust@0.3"]), is_robust(m, x, eps=0.3, sample_ids=torch.arange(6)))
    assert RobustnessIndicator(m, eps=0.1).attack == DEFAULT_ATTACK
    assert RobustnessIndicator(m, eps=0.1, attack="apgd-ce").attack == "apgd-ce"
    assert RobustnessIndicator(m, eps=0.1, attack="ensemble").attack == "ensemble"

"""Sound margin bounds on the layers people use (issue 24 item 3): ``abstain.attacks.interval``
walks a ``torch.fx`` trace, ``abstain.attacks.bounds`` bounds the margin through it.

Soundness is a property over random small nets of every supported layer (Linear, Conv1d,
Conv2d, eval BatchNorm1d/2d with negative scales, ReLU, Flatten / view / reshape / slicing /
cat, average and max pooling, Identity, eval Dropout, constants, residual additions; the
project's own 1-D CNN, digits CNN, MLP and ResNet basic block): the bound never exceeds the
margin at random points and vertices of the ball ∩ box nor at the strong attack's best
point, for ℓ∞ and ℓ2. Every output box contains the outputs at those points. The bound is
not vacuous (it proves every point at a tiny ε and tends to the clean margin), and a model
with any unsupported node gets no bound at all.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from abstain.attacks import is_robust
from abstain.attacks.bounds import certified, margin_lower_bound
from abstain.attacks.diversity import margin_to_flip
from abstain.attacks.interval import trace_intervals
from abstain.attacks.strong import strong_candidates
from abstain.models import Normalize, create
from abstain.models.resnet import BasicBlock, global_avg_pool

DT = torch.float64


class Block1d(nn.Module):
    """A 1-D residual block with BatchNorm (post-activation, as ``models.resnet``)."""

    def __init__(self, c: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(c, c, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(c)
        self.conv2 = nn.Conv1d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(c)
        self.short = nn.Sequential() if stride == 1 else nn.Sequential(
            nn.Conv1d(c, c, 1, stride=stride, bias=False), nn.BatchNorm1d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.short(x))


class ResNet1d(nn.Module):
    """Stem, two residual blocks, a global mean and a reshape by ``size``."""

    def __init__(self, k: int, c: int = 4) -> None:
        super().__init__()
        self.normalize = Normalize((0.5,), (0.25,))
        self.stem = nn.Conv1d(1, c, 5, padding=2)
        self.bn = nn.BatchNorm1d(c)
        self.b1, self.b2 = Block1d(c), Block1d(c, 2)
        self.fc = nn.Linear(c, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.stem(self.normalize(x))))
        h = self.b2(self.b1(h)).mean(dim=2)
        return self.fc(h.view(h.size(0), -1))


class ResNet2d(nn.Module):
    """The project's ResNet basic block (projection shortcut), global mean pooling."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.normalize = Normalize((0.4, 0.5), (0.2, 0.3))
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.block = BasicBlock(4, 6, stride=2)
        self.fc = nn.Linear(6, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.conv(self.normalize(x))))
        return self.fc(global_avg_pool(self.block(h)))


class Branches(nn.Module):
    """Functional ops: slicing, cat, constants (add, scale, subtract), torch.flatten, and an
    output that is not a Linear layer (an eval BatchNorm1d after it)."""

    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.a = nn.Linear(d // 2, 5)
        self.b = nn.Linear(d - d // 2, 5)
        self.register_buffer("shift", torch.linspace(-0.2, 0.2, 10))
        self.head = nn.Linear(10, k)
        self.bn = nn.BatchNorm1d(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.flatten(x, 1)
        d = h.shape[1] // 2
        u = torch.cat([self.a(h[:, :d]), self.b(h[:, d:])], dim=1)
        u = torch.relu(0.5 * u - self.shift) + 0.1
        return self.bn(self.head(u))


def conv1d_chain(k: int) -> nn.Module:
    return nn.Sequential(Normalize((0.5,), (0.3,)), nn.Conv1d(1, 4, 5, padding=2), nn.BatchNorm1d(4), nn.ReLU(),
                         nn.AvgPool1d(2), nn.Conv1d(4, 6, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool1d(2),
                         nn.Dropout(0.3), nn.Flatten(), nn.Linear(6 * 3, k))


def conv2d_chain(k: int) -> nn.Module:
    return nn.Sequential(Normalize((0.4, 0.5), (0.2, 0.3)), nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4),
                         nn.ReLU(), nn.Identity(), nn.Conv2d(4, 5, 3, stride=2), nn.ReLU(), nn.AvgPool2d(1),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, k))


# name -> (builder(k), input shape of one sample)
NETS = {
    "conv1d_chain": (conv1d_chain, (1, 24)),
    "conv2d_chain": (conv2d_chain, (2, 6, 6)),
    "resnet1d_bn": (lambda k: ResNet1d(k), (1, 16)),
    "resnet2d_bn": (lambda k: ResNet2d(k), (2, 6, 6)),
    "branches": (lambda k: Branches(12, k), (12,)),
    "project_cnn1d": (lambda k: create("cnn1d", k, length=16, width=3), (1, 16)),
    "project_cnn": (lambda k: create("cnn", k, input_size=4, width=2), (1, 4, 4)),
    "project_mlp": (lambda k: create("mlp", k, in_features=6, hidden=8, depth=2), (6,)),
}


def build(name: str, seed: int, k: int = 4) -> nn.Module:
    """The net ``name`` with random weights and random BatchNorm statistics (negative
    scales too), in eval mode and float64."""
    torch.manual_seed(seed)
    m = NETS[name][0](k).to(DT)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                c = mod.num_features
                mod.running_mean.copy_(torch.rand(c, generator=g, dtype=DT) * 0.4 - 0.2)
                mod.running_var.copy_(torch.rand(c, generator=g, dtype=DT) * 1.5 + 0.5)
                mod.weight.copy_(torch.rand(c, generator=g, dtype=DT) * 3 - 1.5)
                mod.bias.copy_(torch.rand(c, generator=g, dtype=DT) * 0.4 - 0.2)
    return m.eval()


def ball_points(x: torch.Tensor, eps: float, norm: str, n: int, g: torch.Generator) -> torch.Tensor:
    """n points of B^p_ε(x) ∩ box per sample, (n, N, ...): ℓ∞ half vertices, half uniform;
    ℓ2 on the sphere and inside."""
    if norm == "linf":
        u = torch.rand((n,) + x.shape, generator=g, dtype=x.dtype) * 2 - 1
        u[: n // 2] = u[: n // 2].sign()
        pts = x + eps * u
    else:
        v = torch.randn((n,) + x.shape, generator=g, dtype=x.dtype)
        v = v / v.flatten(2).norm(dim=2).view((n, -1) + (1,) * (x.dim() - 1))
        r = torch.rand((n, x.shape[0]) + (1,) * (x.dim() - 1), generator=g, dtype=x.dtype)
        r[: n // 2] = 1.0
        pts = x + eps * v * r
    return pts.clamp(0, 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(NETS))
def test_bounds_are_never_violated(name: str, seed: int) -> None:
    """The margin bound ≤ the margin at 48 random points of the ball ∩ box and at the strong
    attack's best point (bounds not used by it); the output box contains every output."""
    g = torch.Generator().manual_seed(100 + seed)
    m = build(name, seed)
    x = torch.rand((12,) + NETS[name][1], generator=g, dtype=DT)
    with torch.no_grad():
        z = m(x)
    pred = z.argmax(1)
    for norm, eps in (("linf", 0.01), ("linf", 0.1), ("l2", 0.05), ("l2", 0.5)):
        lb = margin_lower_bound(m, x, pred, eps, norm)
        tr = trace_intervals(m, x, eps, norm)
        assert lb is not None and tr is not None and lb.shape == (12,)
        adv, _ = strong_candidates(m, x, pred, z, eps=eps, norm=norm, steps=10, ids=torch.arange(12),
                                   use_bounds=False, seed=seed)
        pts = torch.cat([ball_points(x, eps, norm, 48, g), adv.unsqueeze(0)])
        with torch.no_grad():
            out = m(pts.flatten(0, 1)).view(pts.shape[0], 12, -1)
        margin = margin_to_flip(out.flatten(0, 1), pred.repeat(pts.shape[0])).view(pts.shape[0], 12)
        tol = 1e-9 * (1 + out.abs().amax())
        assert (lb <= margin.amin(0) + tol).all(), (name, norm, eps)
        assert ((tr.out.lo - tol <= out) & (out <= tr.out.hi + tol)).all(), (name, norm, eps)


@pytest.mark.parametrize("name", sorted(NETS))
def test_bounds_prove_at_a_tiny_eps_and_tend_to_the_clean_margin(name: str) -> None:
    """Not vacuous: at ε = 1e-7 the bound is within 1e-4 of the clean margin, and at ε = 1e-6
    every point whose clean margin exceeds 1e-3 is proven robust (ℓ∞ and ℓ2)."""
    g = torch.Generator().manual_seed(7)
    m = build(name, 3)
    x = torch.rand((30,) + NETS[name][1], generator=g, dtype=DT)
    with torch.no_grad():
        z = m(x)
    pred, clean = z.argmax(1), margin_to_flip(z, z.argmax(1))
    for norm in ("linf", "l2"):
        lb = margin_lower_bound(m, x, pred, 1e-7, norm)
        assert lb is not None and (lb <= clean + 1e-12).all() and (clean - lb < 1e-4).all()
        cert = certified(m, x, pred, z, 1e-6, norm)
        assert cert is not None and cert[clean > 1e-3].all() and (clean > 1e-3).sum() >= 20


def test_l2_ball_at_the_first_affine_layer_tightens_the_box() -> None:
    """ℓ2: the ball's exact range at the first dense layer (after Normalize and BatchNorm) is
    intersected with the enclosing box's, so the bound is never below the ℓ∞-box bound of
    the same ε and, on 24-dimensional signals, above it on most points."""
    g = torch.Generator().manual_seed(8)
    m = build("conv1d_chain", 4)
    x = torch.rand(40, 1, 24, generator=g, dtype=DT)
    with torch.no_grad():
        pred = m(x).argmax(1)
    lb2, lbi = margin_lower_bound(m, x, pred, 0.05, "l2"), margin_lower_bound(m, x, pred, 0.05, "linf")
    assert (lb2 >= lbi - 1e-12).all() and (lb2 > lbi + 1e-6).float().mean() > 0.9


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(x * torch.sigmoid(self.a(x)))     # a product of two bounded values


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) if x.sum() > 0 else -self.a(x)  # data-dependent control flow: no trace


def _unsupported() -> list[nn.Module]:
    torch.manual_seed(0)
    train_bn = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    train_bn.train()
    circular = nn.Sequential(nn.Unflatten(1, (1, 6)), nn.Conv1d(1, 2, 3, padding=1, padding_mode="circular"),
                             nn.Flatten(), nn.Linear(12, 3)).eval()
    gelu = nn.Sequential(nn.Linear(6, 4), nn.GELU(), nn.Linear(4, 3)).eval()
    return [Gated().eval(), Branchy().eval(), train_bn, circular, gelu]


@pytest.mark.parametrize("i", range(5))
def test_unsupported_nodes_give_no_bound_and_the_points_are_attacked(i: int) -> None:
    m = _unsupported()[i].to(DT)
    x = torch.rand(20, 6, generator=torch.Generator().manual_seed(i), dtype=DT)
    with torch.no_grad():
        z = m(x)
    assert margin_lower_bound(m, x, z.argmax(1), 1e-6) is None
    assert certified(m, x, z.argmax(1), z, 1e-6) is None
    if m.training:      # BatchNorm in training mode: only the guard (attacks run in eval mode)
        return
    _, proven = strong_candidates(m, x, z.argmax(1), z, eps=0.3, norm="linf", steps=10, ids=torch.arange(20))
    assert not proven.any()
    assert not is_robust(m, x, eps=0.5).all()


def test_tracing_restores_attributes_and_uses_current_weights() -> None:
    """Tracing runs ``forward`` on proxies once: a call counter it rebinds is restored; the
    cached trace reads the layers at each call, so new weights give the new (sound) bound."""

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(5, 3)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.lin(x)

    m = Counting().to(DT).eval()
    x = torch.rand(10, 5, generator=torch.Generator().manual_seed(1), dtype=DT)
    pred = m(x).argmax(1)
    assert m.calls == 1
    lb1 = margin_lower_bound(m, x, pred, 0.05)
    assert m.calls == 1 and isinstance(m.calls, int) and lb1 is not None
    with torch.no_grad():
        m.lin.weight.mul_(-1)
        m.lin.bias.mul_(-1)
    pred2 = m(x).argmax(1)
    lb2 = margin_lower_bound(m, x, pred2, 0.05)
    w = m.lin.weight
    c = w[pred2].unsqueeze(1) - w.unsqueeze(0)
    z = m(x).detach()
    exact = (z.gather(1, pred2.view(-1, 1)) - z - 0.05 * c.abs().sum(-1)).scatter(1, pred2.view(-1, 1), float("inf")).amin(1)
    interior = ((x > 0.05) & (x < 0.95)).all(1)
    assert torch.allclose(lb2[interior], exact[interior], atol=1e-12) and interior.sum() > 0

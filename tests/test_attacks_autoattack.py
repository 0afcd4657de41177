"""The strong attack finds every flip that AutoAttack finds (issue 24), on models trained
here: a PGD-AT MNIST-1D 1-D CNN, a PGD-AT 1-D ResNet with BatchNorm (MNIST-1D) and a
standard digits CNN. AutoAttack is built from torchattacks' APGD-CE, APGD-T, FAB-T and Square
at the original settings (tests/autoattack_reference.py), labels = clean predictions."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from abstain import data
from abstain.attacks import is_robust, pgd
from abstain.models import Normalize, create
from autoattack_reference import autoattack


class Block1d(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU (a basic residual block)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(c, c, 3, padding=1, bias=False), nn.BatchNorm1d(c), nn.ReLU(),
                                  nn.Conv1d(c, c, 3, padding=1, bias=False), nn.BatchNorm1d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


def resnet1d(k: int, c: int = 16) -> nn.Module:
    return nn.Sequential(Normalize((0.5,), (1 / 12,)), nn.Conv1d(1, c, 5, padding=2, bias=False), nn.BatchNorm1d(c),
                         nn.ReLU(), Block1d(c), nn.Conv1d(c, c, 3, stride=2, padding=1), nn.ReLU(), Block1d(c),
                         nn.AdaptiveAvgPool1d(4), nn.Flatten(), nn.Linear(4 * c, k))


def train(make, x: torch.Tensor, y: torch.Tensor, epochs: int, adv_eps: float, seed: int) -> nn.Module:
    """``make()`` trained with Adam, batch 64; PGD-AT (eq. 6, 5-step PGD) when ``adv_eps`` > 0."""
    torch.manual_seed(seed)
    m = make()
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            b = perm[i:i + 64]
            xb = x[b]
            if adv_eps > 0:
                xb = pgd(m, xb, y[b], eps=adv_eps, steps=5, generator=torch.Generator().manual_seed(i))
            m.train()
            loss = nn.functional.cross_entropy(m(xb), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return m.eval()


def models(n: int = 120) -> list[tuple[str, nn.Module, torch.Tensor, float]]:
    """The three models, each with its first ``n`` test inputs and its ε."""
    tr, te = data.load("mnist1d", "train"), data.load("mnist1d", "test")
    dtr, dte = data.load("digits", "train"), data.load("digits", "test")
    xs, ys = tr.x[:3000], tr.y[:3000]
    return [
        ("mnist1d cnn1d pgd-at", train(lambda: create("cnn1d", 10), xs, ys, 4, 0.02, 0), te.x[:n], 0.02),
        ("mnist1d resnet1d-bn pgd-at", train(lambda: resnet1d(10), xs, ys, 4, 0.02, 1), te.x[:n], 0.02),
        ("digits cnn standard", train(lambda: create("cnn", 10), dtr.x, dtr.y, 4, 0.0, 2), dte.x[:n], 0.05),
    ]


@pytest.mark.slow
def test_strong_finds_every_flip_that_autoattack_finds() -> None:
    rows = []
    for name, m, x, eps in models():
        aa = autoattack(m, x, eps)
        rob = is_robust(m, x, eps=eps, generator=torch.Generator().manual_seed(0))
        only_aa = int((aa["flipped"] & rob).sum())
        only_st = int((~aa["flipped"] & ~rob).sum())
        rows.append((name, 1 - float(aa["flipped"].float().mean()), float(rob.float().mean()), only_aa, only_st,
                     aa["by"]))
        print(f"{name} eps={eps}: robust AutoAttack {rows[-1][1]:.3f}, strong {rows[-1][2]:.3f}; "
              f"flips only AutoAttack {only_aa}, only strong {only_st}; AutoAttack by {aa['by']}")
        assert 0 < int(rob.sum()) < len(x)           # a non-trivial case
        assert only_aa == 0, f"{name}: AutoAttack found {only_aa} flips that the strong attack missed"

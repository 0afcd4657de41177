"""Small digits models for the selector / compose / stage tests (trained in seconds).

``core``: standard training; ``robust``: training on inputs with uniform noise of radius
3ε (cheap, and robust enough at ε to give a real mix of robust and non-robust samples).
Plain loops, so these tests do not depend on the trainer.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from abstain import data, models

EPS = 0.1


def _train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, noise: float,
           seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], 256):
            idx = perm[i:i + 256]
            xb, yb = x[idx], y[idx]
            if noise > 0:
                xb = (xb + (2 * torch.rand(xb.shape, generator=g) - 1) * noise).clamp(0, 1)
            model.train()
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@functools.lru_cache(maxsize=None)
def digits_models(seed: int = 0):
    """(train, test, robust model, core model) on digits; cached per process."""
    torch.manual_seed(seed)
    train, test = data.load("digits", "train"), data.load("digits", "test")
    core = _train(models.create("mlp", 10, in_features=64, hidden=64, depth=2), train.x, train.y,
                  20, 0.0, seed)
    torch.manual_seed(seed + 1)
    robust = _train(models.create("mlp", 10, in_features=64, hidden=64, depth=2), train.x, train.y,
                    30, 3 * EPS, seed)
    for m in (core, robust):
        for p in m.parameters():
            p.requires_grad_(False)
    return train, test, robust, core

"""AutoAttack at its original settings, built from torchattacks 3.5.1's pieces (test-only).

Croce & Hein (2020)'s standard AutoAttack runs, each on the points still unflipped:
APGD-CE (100 steps, 1 restart), APGD-T (100 steps, the 9 strongest other classes, or K-1),
FAB-T (100 steps, same targets), Square (5,000 queries). torchattacks' own ``AutoAttack``
runs 10 steps (PITFALLS), so the pieces are built here with the original arguments (the
constructor arguments are those of the installed ``torchattacks/attacks/{apgd,apgdt,fab,
square}.py``). Labels are the model's clean predictions, so success is a prediction flip;
every returned point is checked with a fresh forward pass to lie in the ℓ∞ ball and the box
and to flip. The model stays in eval mode (a wrapper created in training mode would have
torchattacks put BatchNorm back into training mode after each attack).
"""
from __future__ import annotations

import time

import torch
from torch import nn

NAMES = ("apgd-ce", "apgd-t", "fab-t", "square")


class AsImage(nn.Module):
    """torchattacks' attacks reshape inputs as images (N, C, H, W) (PITFALLS: non-image
    shapes): they see (N, 1, 1, D) and the model its own shape."""

    def __init__(self, model: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.model, self.shape = model, shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.reshape((x.shape[0],) + self.shape))


def autoattack(model: nn.Module, x: torch.Tensor, eps: float, *, steps: int = 100, queries: int = 5000,
               seed: int = 0) -> dict:
    """Returns ``{"flipped": (N,) bool, "x_adv": (N, ...), "by": {name: count}, "seconds": float}``."""
    import torchattacks

    model.eval()
    with torch.no_grad():
        logits = model(x)
    shape = tuple(x.shape[1:])
    if x.dim() != 4:
        model, x = AsImage(model, shape).eval(), x.reshape(x.shape[0], 1, 1, -1)
    pred = logits.argmax(1)
    k = logits.shape[1]
    nt = min(k - 1, 9)
    attacks = {
        "apgd-ce": torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, loss="ce"),
        "apgd-t": torchattacks.APGDT(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed,
                                     n_classes=nt + 1),
        "fab-t": torchattacks.FAB(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed,
                                  multi_targeted=True, n_classes=nt + 1),
        "square": torchattacks.Square(model, norm="Linf", eps=eps, n_queries=queries, n_restarts=1, seed=seed),
    }
    flipped = torch.zeros(x.shape[0], dtype=torch.bool)
    x_adv = x.clone()
    by = {}
    t0 = time.process_time()
    for name, atk in attacks.items():
        idx = torch.nonzero(~flipped).flatten()
        if idx.numel() == 0:
            by[name] = 0
            continue
        xa = atk(x[idx], pred[idx]).detach()
        model.eval()     # torchattacks restores the mode it found; BatchNorm must stay in eval mode
        # in the ball (float32 rounding of x ± ε) and the box, as returned
        assert (xa - x[idx]).abs().max() <= eps + 1e-6 and xa.min() >= 0 and xa.max() <= 1
        with torch.no_grad():
            f = model(xa).argmax(1) != pred[idx]
        flipped[idx[f]] = True
        x_adv[idx[f]] = xa[f]
        by[name] = int(f.sum())
    return {"flipped": flipped, "x_adv": x_adv.reshape((x.shape[0],) + shape), "by": by, "seconds": time.process_time() - t0}

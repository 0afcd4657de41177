"""The paper's synthetic three-class task ``gauss3`` (Fig. 1, Appendix A.2)."""
from __future__ import annotations

import torch

from .base import TensorDataset

# The paper gives no parameters. These are the ones of the authors' code
# (ymerkli/robust-abstain, synthetic data generator): three Gaussians with
# mixture weights 31/64, 1/2 and 1/64.
GAUSS3_MEANS = ((0.25, 0.25), (0.75, 0.75), (0.55, 0.80))
GAUSS3_STDS = ((0.05, 0.05), (0.05, 0.05), (0.05 / 3, 0.05 / 2))
GAUSS3_WEIGHTS = (31 / 64, 1 / 2, 1 / 64)
GAUSS3_SIZE = {"train": 1000, "test": 1000}


def gauss3(split: str = "train", seed: int = 0, size: int | None = None) -> TensorDataset:
    """Sample the synthetic 3-class mixture in [0, 1]^2 (vectors of shape (2,)).

    Class c ~ N(mean_c, diag(std_c^2)) with prior GAUSS3_WEIGHTS[c]. Train and test
    draw from independent streams derived from ``seed``. Samples are clamped to
    the unit box (a shift of at most ~0 in practice: the nearest mean is 5σ from the
    border) so that every input is a valid point of the threat model.
    """
    n = size if size is not None else GAUSS3_SIZE[split]
    stream = {"train": 0, "test": 1, "val": 2}[split]
    g = torch.Generator().manual_seed(1_000_003 * seed + 7919 * stream + 17)
    weights = torch.tensor(GAUSS3_WEIGHTS, dtype=torch.float64)
    y = torch.multinomial(weights, n, replacement=True, generator=g)
    means = torch.tensor(GAUSS3_MEANS, dtype=torch.float64)[y]
    stds = torch.tensor(GAUSS3_STDS, dtype=torch.float64)[y]
    x = means + stds * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return TensorDataset(x.clamp(0, 1).float(), y, 3, "gauss3")

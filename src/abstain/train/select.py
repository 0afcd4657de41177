"""Model selection on the validation split (carved from the training data; never the test set)."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .. import attacks  # attacks.pgd is looked up at call time (tests spy on it)
from .. import distributed as dist_utils
from ..errors import ConfigError
from ..utils import eval_mode
from ..seeds import derive

ROBUST_SELECT = {"pgd-at": "rob_acc", "trades": "rob_acc", "era": "rob_acc-rob_inacc",
                 "dga": "rob_acc-rob_inacc"}


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(dim=1)


def validation_metrics(model: nn.Module, data: Any, *, eps: float | None, norm: str = "linf",
                       steps: int = 10, batch_size: int = 256, device: torch.device | None = None,
                       seed: int = 0, channels_last: bool = False) -> dict[str, float]:
    """Natural accuracy and, when ``eps`` is set, the PGD robustness of the prediction on
    ``data`` (the validation split): ``rob_acc`` = correct and unchanged under a ``steps``-step
    PGD aimed at the model's own prediction (eq. 2), ``rob_inacc`` = wrong and unchanged (eq. 3).

    A cheap training-time proxy of the 40-step APGD evaluation. Under torchrun the samples
    are sharded over ranks and the counts summed, so every rank gets the same numbers.
    """
    device = device or next(model.parameters()).device
    idx = dist_utils.shard_indices(len(data))
    counts = torch.zeros(4, dtype=torch.float64, device=device)
    gen = torch.Generator(device=device)
    with eval_mode(model):
        for b, start in enumerate(range(0, idx.numel(), batch_size)):
            sel = idx[start:start + batch_size]
            x = data.x[sel].to(device)
            y = data.y[sel].to(device)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            pred = _predict(model, x)
            acc = pred == y
            counts[0] += acc.sum()
            counts[3] += y.numel()
            if eps is not None and eps > 0:
                gen.manual_seed(derive(seed, b, dist_utils.rank(), 0x7A1))
                with torch.enable_grad():
                    x_adv = attacks.pgd(model, x, pred, eps=eps, norm=norm, steps=steps, loss="ce",
                                        random_start=True, generator=gen, early_stop=False)
                robust = _predict(model, x_adv) == pred
            else:
                robust = torch.ones_like(acc) if eps == 0 else torch.zeros_like(acc)
            counts[1] += (acc & robust).sum()
            counts[2] += (~acc & robust).sum()
    if dist_utils.is_distributed():
        torch.distributed.all_reduce(counts)
    n = max(float(counts[3]), 1.0)
    out = {"nat_acc": float(counts[0]) / n}
    if eps is not None:
        out["rob_acc"] = float(counts[1]) / n
        out["rob_inacc"] = float(counts[2]) / n
    return out


def selection_score(select: str, loss: str, metrics: Mapping[str, float]) -> tuple[str, float]:
    """The validation score that picks the best epoch: ``auto`` = natural accuracy for
    standard/noise/cra, robust accuracy for pgd-at/trades, robust accuracy minus robust
    inaccuracy for era/dga (the goal of eq. 4). Higher is better; ties keep the earlier epoch."""
    if select == "auto":
        select = ROBUST_SELECT.get(loss, "nat_acc") if "rob_acc" in metrics else "nat_acc"
    if select == "last":
        return select, 0.0
    if select == "rob_acc-rob_inacc":
        return select, metrics["rob_acc"] - metrics["rob_inacc"]
    if select not in metrics:
        raise ConfigError(f"selection by {select!r} needs the validation PGD (set [loss] eps)")
    return select, metrics[select]

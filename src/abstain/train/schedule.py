"""Learning-rate schedules (Appendix A.2) and the seeded data order of the training loop."""
from __future__ import annotations

import torch

from ..errors import ConfigError
from ..seeds import generator

SCHEDULES = ("scratch", "finetune", "synthetic", "constant")
# lr multipliers once a fraction of the epochs is completed (Appendix A.2)
MILESTONES: dict[str, tuple[tuple[float, float], ...]] = {
    "scratch": ((0.75, 0.1), (0.9, 0.01)),
    "finetune": ((0.75, 0.1),),
    "synthetic": (),
    "constant": (),
}


def check_schedule(schedule: str) -> None:
    if schedule not in MILESTONES:
        raise ConfigError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")


def lr_at(schedule: str, epoch: int, epochs: int, lr: float) -> float:
    """Learning rate of (0-based) ``epoch``: ``lr`` times the factor of every milestone
    fraction already completed (scratch: ×0.1 at 75%, ×0.01 at 90%; finetune: ×0.1 at 75%)."""
    check_schedule(schedule)
    factor = 1.0
    for frac, f in MILESTONES[schedule]:
        if epoch >= frac * epochs:
            factor = f
    return lr * factor


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of ``epoch``: identical on every rank and after a resume."""
    return torch.randperm(n, generator=generator(seed, epoch, 0x0D474))

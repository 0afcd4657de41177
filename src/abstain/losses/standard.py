"""Standard training: cross-entropy on clean inputs (the paper's L_std, Fig. 1)."""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn


def standard_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  params: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ℓ_CE(f_θ(x), y), the batch mean, on clean inputs in pixel space [0, 1].

    Returns ``(loss, parts)`` with ``parts = {"ce": detached loss}``.
    """
    loss = F.cross_entropy(model(x), y)
    return loss, {"ce": loss.detach()}

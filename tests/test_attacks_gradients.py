"""Zero gradients are named (issue 24): APGD-CE on a model whose logits are scaled by 1e30
(the same predictions) sees an all-zero CE gradient and reports flips it never tried; the
evaluation warns and suggests the strong attack, which is unaffected."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from abstain.attacks import is_robust
from abstain.attacks.gradients import GradientWarning, blind_points, blind_warning
from abstain.evaluation import evaluate
from test_attacks_oracle import affine, linf_min_margin


class Scaled(nn.Module):
    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.scale


def test_saturated_softmax_blinds_apgd_ce_not_strong() -> None:
    g = torch.Generator().manual_seed(0)
    lin = affine(8, 4, g).float()
    m = Scaled(lin, 1e30).eval()
    x = torch.rand(200, 8, generator=g)
    with torch.no_grad():
        pred = m(x).argmax(1)
        assert torch.equal(pred, lin(x).argmax(1))                 # the same predictions
        truth = linf_min_margin(lin.double(), x.double(), 0.1) >= 0
    lin.float()
    assert blind_points(m, x, pred, "apgd-ce").all()
    assert not blind_points(m, x, pred, "strong").any()
    assert not blind_points(lin, x, pred, "apgd-ce").any()     # unscaled: a usable gradient
    rob_ce = is_robust(m, x, eps=0.1, attack="apgd-ce", generator=torch.Generator().manual_seed(0))
    rob_st = is_robust(m, x, eps=0.1, generator=torch.Generator().manual_seed(0))
    assert (~truth).sum() >= 20                                  # flips exist
    assert int((rob_ce & ~truth).sum()) > int((rob_st & ~truth).sum())   # APGD-CE misses them
    assert not (rob_st & ~truth).any() and not (~rob_st & truth).any()   # strong: exact here


def test_evaluate_warns_and_suggests_the_strong_attack() -> None:
    g = torch.Generator().manual_seed(1)
    m = Scaled(affine(6, 3, g).float(), 1e30).eval()
    data = torch.utils.data.TensorDataset(torch.rand(30, 6, generator=g), torch.zeros(30, dtype=torch.long))
    with pytest.warns(GradientWarning, match=r"30 of 30 points .*--attack strong"):
        res = evaluate(m, data, eps=0.05, attack="apgd-ce", steps=5, show_progress=False, double_eps=False)
    assert res.summary["gradient_blind"] == {"points": 30, "of": 30, "attack": "apgd-ce"}   # the result says so too
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientWarning)     # the strong attack is not blind
        res = evaluate(m, data, eps=0.05, steps=5, show_progress=False, double_eps=False)
    assert res.summary["gradient_blind"]["points"] == 0


def test_blind_counts_nan_gradients_and_words_the_warning() -> None:
    class NaNGrad(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([x.sum(1), torch.sqrt(x[:, 0] - x[:, 0])], dim=1)  # sqrt'(0) = inf

    x = torch.rand(5, 3, generator=torch.Generator().manual_seed(2)) + 0.1
    assert blind_points(NaNGrad(), x, torch.zeros(5, dtype=torch.long), "apgd-ce").all()
    assert blind_warning(0, 10, "apgd-ce") is None
    w = blind_warning(3, 10, "apgd-ce")
    assert "3 of 10 points (30.0 %)" in w and "strong" in w

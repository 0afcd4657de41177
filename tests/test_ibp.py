"""Interval bound propagation: soundness against brute-force sampling, exactness on one
affine layer, error messages."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from abstain.ibp import (IBPUnsupportedError, ibp_bounds, input_box, interval_forward,
                         margin_lower_bound)
from abstain.models import Normalize, NormalizedModel, create


def _sample_box(lo: torch.Tensor, hi: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k points per sample: the corners-heavy mix of uniform samples and box vertices."""
    shape = (k,) + tuple(lo.shape)
    u = torch.rand(shape, generator=g)
    corners = torch.rand(shape, generator=g) < 0.5
    u = torch.where(torch.rand(shape, generator=g) < 0.5, corners.float(), u)
    return lo.unsqueeze(0) + u * (hi - lo).unsqueeze(0)


def _cnn_with_bn() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        Normalize((0.3,), (0.2,)),
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, stride=1, padding=0), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 2 * 2, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(16, 5),
    )
    # non-trivial running statistics and a negative BN scale somewhere
    for bn in (net[2], net[9]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(-1.5, 1.5)
        bn.bias.data.uniform_(-0.3, 0.3)
    return net.eval()


@pytest.mark.parametrize("builder", ["cnn_bn", "mlp", "digits_cnn", "normalized"])
def test_bounds_contain_bruteforce_samples(builder: str) -> None:
    g = torch.Generator().manual_seed(1)
    if builder == "cnn_bn":
        model, x = _cnn_with_bn(), torch.rand(6, 1, 8, 8, generator=g)
    elif builder == "mlp":
        torch.manual_seed(2)
        model, x = create("mlp", 3, in_features=2).eval(), torch.rand(6, 2, generator=g)
    elif builder == "digits_cnn":
        torch.manual_seed(3)
        model, x = create("cnn", 10, width=4).eval(), torch.rand(4, 1, 8, 8, generator=g)
    else:
        torch.manual_seed(4)
        inner = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 3))
        model = NormalizedModel(inner, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)).eval()
        x = torch.rand(5, 3, 2, 2, generator=g)
    eps = 0.1
    lo_in, hi_in = input_box(x, eps)
    lo, hi = ibp_bounds(model, x, eps)
    assert (lo <= hi).all()
    pts = _sample_box(lo_in, hi_in, 400, g)  # (k, N, ...)
    with torch.no_grad():
        out = model(pts.reshape(-1, *x.shape[1:])).reshape(400, x.shape[0], -1)
    tol = 1e-5
    assert (out >= lo.unsqueeze(0) - tol).all()
    assert (out <= hi.unsqueeze(0) + tol).all()
    # the bounds are not vacuous: the clean output lies inside and the width is finite
    with torch.no_grad():
        clean = model(x)
    assert ((clean >= lo - tol) & (clean <= hi + tol)).all()
    assert torch.isfinite(hi - lo).all()


def test_single_affine_layer_is_exact() -> None:
    torch.manual_seed(5)
    lin = nn.Linear(4, 3)
    x = torch.rand(7, 4)
    eps = 0.05
    lo, hi = ibp_bounds(lin, x, eps)
    lo_in, hi_in = input_box(x, eps)
    # exact extremes: each output picks the input corner that maximises/minimises it
    w = lin.weight
    best_hi = torch.where(w.unsqueeze(0) > 0, hi_in.unsqueeze(1), lo_in.unsqueeze(1))  # (N,3,4)
    best_lo = torch.where(w.unsqueeze(0) > 0, lo_in.unsqueeze(1), hi_in.unsqueeze(1))
    exact_hi = (best_hi * w).sum(-1) + lin.bias
    exact_lo = (best_lo * w).sum(-1) + lin.bias
    torch.testing.assert_close(hi, exact_hi, rtol=0, atol=1e-6)
    torch.testing.assert_close(lo, exact_lo, rtol=0, atol=1e-6)


def test_input_box_clips_to_unit_box_and_zero_eps_is_point() -> None:
    x = torch.tensor([[0.0, 0.5, 1.0]])
    lo, hi = input_box(x, 0.2)
    assert torch.equal(lo, torch.tensor([[0.0, 0.3, 0.8]]))
    torch.testing.assert_close(hi, torch.tensor([[0.2, 0.7, 1.0]]))
    model = create("mlp", 3, in_features=3).eval()
    lo, hi = ibp_bounds(model, x, 0.0)
    with torch.no_grad():
        torch.testing.assert_close(lo, model(x))
        torch.testing.assert_close(hi, model(x))


def test_margin_lower_bound_certifies_only_true_robustness() -> None:
    torch.manual_seed(6)
    model = create("mlp", 3, in_features=2).eval()
    x = torch.rand(50, 2)
    with torch.no_grad():
        pred = model(x).argmax(1)
    m = margin_lower_bound(model, x, pred, 0.05)
    g = torch.Generator().manual_seed(7)
    lo_in, hi_in = input_box(x, 0.05)
    pts = _sample_box(lo_in, hi_in, 300, g)
    with torch.no_grad():
        preds = model(pts.reshape(-1, 2)).argmax(1).reshape(300, 50)
    certified = m > 0
    # a certified sample never changes its prediction on sampled points
    assert (preds[:, certified] == pred[certified]).all()
    # at eps = 0 the bound is the true margin
    m0 = margin_lower_bound(model, x, pred, 0.0)
    assert (m0 >= 0).all()


def test_unsupported_layer_and_train_mode_bn_raise() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh())
    with pytest.raises(IBPUnsupportedError, match="Tanh"):
        ibp_bounds(model, torch.rand(2, 2), 0.1)
    bn = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)).train()
    with pytest.raises(IBPUnsupportedError, match="eval mode"):
        ibp_bounds(bn, torch.rand(2, 2), 0.1)
    with pytest.raises(Exception, match="eps"):
        ibp_bounds(model[:1], torch.rand(2, 2), -0.1)


def test_gradients_flow_through_bounds() -> None:
    torch.manual_seed(8)
    model = create("mlp", 2, in_features=2)
    lo, hi = interval_forward(model, *input_box(torch.rand(4, 2), 0.1))
    (hi - lo).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

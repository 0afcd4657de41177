"""Properties of the attack core: ball and box, ε = 0, huge ε, N = 1 and vector inputs,
batch-size independence with BatchNorm, mode/requires_grad restore, no parameter
gradients, determinism, early stopping, objectives, and clear errors for bad arguments."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from abstain.attacks import apgd, is_robust, objectives, pgd
from abstain.errors import InputError

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


def flat_model(shape: tuple[int, ...], k: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    d = 1
    for s in shape:
        d *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, k)).eval()


def in_ball_and_box(x_adv, x, eps, norm) -> bool:
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    return bool((size <= eps * (1 + 1e-5) + 1e-7).all() and x_adv.min() >= 0 and x_adv.max() <= 1)


shapes = st.sampled_from([(3,), (7,), (1, 4, 4), (3, 2, 5), (2, 3, 3)])


@SETTINGS
@given(shape=shapes, n=st.integers(1, 4), k=st.integers(2, 5), norm=st.sampled_from(["linf", "l2"]),
       eps=st.sampled_from([0.0, 1e-3, 0.1, 0.5, 3.0, 1e6]),
       loss=st.sampled_from(["ce", "dlr", "margin", "ce-targeted", "conf"]),
       which=st.sampled_from(["pgd", "apgd"]), seed=st.integers(0, 3))
def test_ball_and_box_for_random_shapes(shape, n, k, norm, eps, loss, which, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n,) + shape, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    m = flat_model(shape, k, seed)
    fn = pgd if which == "pgd" else apgd
    out = fn(m, x, y, eps=eps, norm=norm, steps=5, loss=loss, generator=g)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert in_ball_and_box(out, x, eps, norm)
    if eps == 0.0:
        assert torch.equal(out, x)


def test_eps_zero_returns_x_and_everything_is_robust() -> None:
    x = torch.rand(5, 1, 4, 4)
    m = flat_model((1, 4, 4), 3)
    y = torch.zeros(5, dtype=torch.long)
    for fn in (pgd, apgd):
        assert torch.equal(fn(m, x, y, eps=0.0), x)
    rob, adv = is_robust(m, x, eps=0.0, return_adv=True, attack="ensemble")
    assert rob.all() and torch.equal(adv, x)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_huge_eps_stays_in_box_and_flips_every_flippable_prediction(norm) -> None:
    # an affine 2-class model whose decision boundary crosses the box: every prediction flips
    m = nn.Linear(4, 2)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]]))
        m.bias.copy_(torch.tensor([-2.0, 2.0]))
    x = torch.rand(16, 4)
    rob, adv = is_robust(m, x, eps=1e6, norm=norm, return_adv=True)
    assert adv.min() >= 0 and adv.max() <= 1
    assert not rob.any()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_batch_of_one_and_vector_inputs(norm) -> None:
    m = flat_model((6,), 4)
    x = torch.rand(1, 6)
    y = m(x).argmax(1)
    for fn in (pgd, apgd):
        out = fn(m, x, y, eps=0.3, norm=norm, early_stop=True)
        assert out.shape == (1, 6) and in_ball_and_box(out, x, 0.3, norm)
    rob, adv = is_robust(m, x, eps=0.3, norm=norm, attack="ensemble", return_adv=True)
    assert rob.shape == (1,) and adv.shape == (1, 6)
    img = torch.rand(1, 3, 5, 5)
    mi = flat_model((3, 5, 5), 3)
    assert is_robust(mi, img, eps=0.01).shape == (1,)


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 3))

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))))


def _batch_drift(m: nn.Module, x: torch.Tensor, size: int) -> float:
    """How much the model's logits and input gradients (what an attack computes) differ
    between one batch and batches of ``size`` on this CPU: float reductions (GEMM blocking,
    vectorised sums) may depend on the batch shape; 0.0 where they do not."""
    modes = [(mod, mod.training) for mod in m.modules()]
    m.eval()
    out = []
    for parts in ([x], list(x.split(size))):
        xs = [p.clone().requires_grad_(True) for p in parts]
        logits = [m(p) for p in xs]
        grads = torch.autograd.grad(sum(torch.logsumexp(lg, 1).sum() for lg in logits), xs)
        out.append((torch.cat([lg.detach() for lg in logits]), torch.cat(grads)))
    for mod, mode in modes:
        mod.training = mode
    m.zero_grad(set_to_none=True)
    return max(float((out[0][0] - out[1][0]).abs().max()), float((out[0][1] - out[1][1]).abs().max()))


def _same_points_or_valid(m: nn.Module, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, size: int, *,
                          eps: float, robust: torch.Tensor | None = None) -> None:
    """Points returned for the whole batch (``a``) and for batches of ``size`` (``b``).

    Where the model's computation does not depend on the batch shape on this CPU (drift 0),
    the attack follows the same float path: the points are bitwise equal. Where it does
    (measured 3.7e-5 apart on an AMD EPYC), the paths may part wherever a sign(gradient)
    component is within rounding of 0 and can end anywhere in the ε-ball, so no float
    tolerance below the ball's diameter is justified: then both sets must be valid (in the
    ball and the box) and agree with the verdicts, which are compared exactly by the caller."""
    if _batch_drift(m, x, size) == 0.0:
        assert torch.equal(a, b)
        return
    modes = [(mod, mod.training) for mod in m.modules()]
    m.eval()
    for pts in (a, b):
        assert float((pts - x).abs().max()) <= eps + 1e-6 and float(pts.min()) >= 0 and float(pts.max()) <= 1
        if robust is not None:   # a robust sample keeps its prediction; a non-robust one's point flips it
            with torch.no_grad():
                flipped = m(pts).argmax(1) != m(x).argmax(1)
            assert torch.equal(flipped, ~robust)
    for mod, mode in modes:
        mod.training = mode


def test_batch_size_independence_mode_restore_and_no_param_grads() -> None:
    torch.manual_seed(0)
    m = BNNet()
    m.train()
    for _ in range(3):   # give BatchNorm non-trivial running statistics
        m(torch.rand(8, 1, 6, 6))
    m.head[1].weight.requires_grad_(False)           # a frozen layer must stay frozen
    m.conv.eval()                                    # a mixed mode must come back as it was
    modes = {name: mod.training for name, mod in m.named_modules()}
    flags = {name: p.requires_grad for name, p in m.named_parameters()}
    stats = m.bn.running_mean.clone(), m.bn.running_var.clone()
    x = torch.rand(12, 1, 6, 6)
    full, adv_full = is_robust(m, x, eps=0.1, attack="ensemble", return_adv=True,
                               generator=torch.Generator().manual_seed(3))
    parts = [is_robust(m, x[i:i + 5], eps=0.1, attack="ensemble", return_adv=True,
                       generator=torch.Generator().manual_seed(3), sample_ids=torch.arange(i, min(i + 5, 12)))
             for i in range(0, 12, 5)]
    # the verdicts are the contract: exactly equal on every CPU
    assert torch.equal(full, torch.cat([p[0] for p in parts]))
    assert 0 < int(full.sum()) < 12
    _same_points_or_valid(m, x, adv_full, torch.cat([p[1] for p in parts]), 5, eps=0.1, robust=full)
    y = torch.randint(0, 3, (12,))
    a1 = apgd(m, x, y, eps=0.1, generator=torch.Generator().manual_seed(1))
    a2 = torch.cat([apgd(m, x[i:i + 1], y[i:i + 1], eps=0.1, generator=torch.Generator().manual_seed(1),
                         sample_ids=torch.tensor([i])) for i in range(12)])
    _same_points_or_valid(m, x, a1, a2, 1, eps=0.1)
    assert {name: mod.training for name, mod in m.named_modules()} == modes
    assert {name: p.requires_grad for name, p in m.named_parameters()} == flags
    assert all(p.grad is None for p in m.parameters())
    assert torch.equal(m.bn.running_mean, stats[0]) and torch.equal(m.bn.running_var, stats[1])


def test_mode_restored_after_an_error() -> None:
    m = flat_model((3,), 3).train()

    def bad_objective(logits, y):
        return logits.sum()                       # not one value per sample

    with pytest.raises(InputError, match="one value per sample"):
        pgd(m, torch.rand(4, 3), torch.zeros(4, dtype=torch.long), eps=0.1, loss=bad_objective)
    assert m.training and all(p.requires_grad for p in m.parameters())


def test_determinism_under_a_generator() -> None:
    m = flat_model((8,), 4)
    x, y = torch.rand(6, 8), torch.randint(0, 4, (6,))
    for fn in (pgd, apgd):
        a = fn(m, x, y, eps=0.2, steps=3, generator=torch.Generator().manual_seed(5), early_stop=False)
        b = fn(m, x, y, eps=0.2, steps=3, generator=torch.Generator().manual_seed(5), early_stop=False)
        c = fn(m, x, y, eps=0.2, steps=0, generator=torch.Generator().manual_seed(6))
        d = fn(m, x, y, eps=0.2, steps=0, generator=torch.Generator().manual_seed(5))
        assert torch.equal(a, b)
        assert not torch.equal(c, d)              # random starts follow the seed


def test_early_stop_drops_flipped_samples_from_the_batch() -> None:
    m = flat_model((10,), 3)
    seen: list[int] = []
    m.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    x = torch.rand(64, 10)
    y = m(x).argmax(1)
    seen.clear()
    adv = apgd(m, x, y, eps=0.5, steps=20, early_stop=True, generator=torch.Generator().manual_seed(0))
    flipped = m(adv).argmax(1) != y
    stopped = sum(seen[:-1])
    seen.clear()
    apgd(m, x, y, eps=0.5, steps=20, early_stop=False, generator=torch.Generator().manual_seed(0))
    full = sum(seen)
    assert flipped.float().mean() > 0.5
    assert stopped < 0.7 * full                   # flipped samples stopped costing compute


def test_objectives() -> None:
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 5.0, 1.0]])
    y = torch.tensor([0, 1])
    assert torch.allclose(objectives.margin(z, y), torch.tensor([-2.0, 3.0]))
    assert torch.allclose(objectives.dlr(z, y), torch.tensor([-2.0 / 3.0, 3.0 / 4.0]))
    z2 = z[:, :2]
    assert torch.equal(objectives.dlr(z2, y), objectives.margin(z2, y))   # < 3 classes: margin
    p = z.softmax(1)
    assert torch.allclose(objectives.conf(z, y), torch.stack([p[0, 1:].max(), p[1, 2]]))   # eq. 21
    assert torch.allclose(objectives.ce_targeted(z, y), -torch.nn.functional.cross_entropy(z, y, reduction="none"))
    tm = objectives.TargetedMargin()
    yt = torch.tensor([[0, 3], [1, 2]])
    assert torch.allclose(tm(z, yt), torch.tensor([-4.0, 3.0]))


def test_targeted_and_callable_objectives() -> None:
    torch.manual_seed(2)
    m = nn.Linear(6, 4)
    with torch.no_grad():
        m.weight.mul_(10.0)
    x = torch.rand(32, 6)
    pred = m(x).argmax(1)
    assert len(pred.unique()) > 1
    target = (pred + 1) % 4
    adv = apgd(m, x, target, eps=1.0, loss="ce-targeted", steps=30, generator=torch.Generator().manual_seed(0))
    reached = m(adv).argmax(1) == target
    assert reached.float().mean() > 0.5
    # a callable gets any y with leading dim N (soft labels, as TRADES' KL), and x_init
    soft = m(x).softmax(1).detach()

    def kl(logits, p):
        return torch.nn.functional.kl_div(logits.log_softmax(1), p, reduction="none").sum(1)

    start = (x + 0.001 * torch.randn(x.shape)).clamp(0, 1)
    out0 = pgd(m, x, soft, eps=0.1, steps=0, loss=kl, x_init=start)
    assert torch.allclose(out0, start)
    out = pgd(m, x, soft, eps=0.1, steps=10, loss=kl, x_init=start)
    assert in_ball_and_box(out, x, 0.1, "linf")
    assert (kl(m(out), soft) >= kl(m(start), soft) - 1e-6).all()    # best point kept
    # conf (eq. 21) raises the most confident other class
    c0 = objectives.conf(m(x), pred)
    c1 = objectives.conf(m(apgd(m, x, pred, eps=0.2, loss="conf", steps=10)), pred)
    assert (c1 >= c0 - 1e-6).all() and (c1 > c0).float().mean() > 0.9


def test_two_class_model_and_class_count_from_output() -> None:
    m2 = flat_model((5,), 2)
    x = torch.rand(20, 5)
    for loss in ("dlr", "ce", "margin"):
        apgd(m2, x, m2(x).argmax(1), eps=0.3, loss=loss)
    assert is_robust(m2, x, eps=0.3, attack="ensemble").shape == (20,)
    m12 = flat_model((5,), 12)
    assert is_robust(m12, x, eps=0.3, attack="ensemble").shape == (20,)
    with pytest.raises(InputError, match="class indices >= 2"):
        apgd(m2, x, torch.full((20,), 2), eps=0.1)


@pytest.mark.parametrize("kwargs,needle", [
    ({"eps": -0.1}, "eps must be >= 0"),
    ({"eps": float("nan")}, "eps must be finite"),
    ({"eps": 0.1, "norm": "l1"}, "unknown norm"),
    ({"eps": 0.1, "loss": "hinge"}, "unknown attack objective"),
    ({"eps": 0.1, "loss": 3}, "objective must be a name or a callable"),
    ({"eps": 0.1, "steps": -2}, "steps must be a non-negative integer"),
    ({"eps": 0.1, "restarts": 0}, "restarts must be a positive integer"),
])
def test_bad_arguments(kwargs, needle) -> None:
    m = flat_model((3,), 3)
    x, y = torch.rand(4, 3), torch.zeros(4, dtype=torch.long)
    for fn in (pgd, apgd):
        with pytest.raises(InputError, match=needle):
            fn(m, x, y, **kwargs)


def test_bad_tensors() -> None:
    m = flat_model((3,), 3)
    x, y = torch.rand(4, 3), torch.zeros(4, dtype=torch.long)
    with pytest.raises(InputError, match="y has leading dimension"):
        apgd(m, x, y[:3], eps=0.1)
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(InputError, match="NaN or Inf"):
        pgd(m, bad, y, eps=0.1)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        is_robust(m, x * 255, eps=0.1)
    with pytest.raises(InputError, match="x_init must be a tensor of the shape of x"):
        pgd(m, x, y, eps=0.1, x_init=x[:2])
    with pytest.raises(InputError, match="integer"):
        apgd(m, x, y.float(), eps=0.1)

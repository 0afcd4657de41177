"""Host reads (device synchronisations on CUDA) of the attack core (issue 17, item 9).

Counted on CPU with a dispatch mode that sees every op which copies a tensor value to the
host (``.item()``, ``bool(t)``, ``int(t)``, ``nonzero``, ...), as in tests/test_gpu_path.py,
and attributed to the innermost function of ``abstain`` that issued it. The losses' inner
attacks take the trusted path (``check=False``: the trainer already checked the batch), so a
TRADES / ERA / DGA / PGD-AT training step reads nothing from the device; the public attacks keep
their checks (inputs finite and in [0, 1], labels in range, a given start point finite).
"""
from __future__ import annotations

import traceback
from collections import Counter

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from abstain.attacks import apgd, pgd
from abstain.data.base import TensorDataset
from abstain.errors import InputError

torch.set_num_threads(1)

HOST_READS = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.is_nonzero",
              "aten.equal", "aten._unique2", "aten.unique_dim"}
# the seed of the random start: drawn from the trainer's CPU generator (no device sync on CUDA)
CPU_ONLY = {"draw_seed"}


class Reads(TorchDispatchMode):
    """Counts host reads by ``file:function`` of the innermost abstain frame."""

    def __init__(self) -> None:
        super().__init__()
        self.where: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if str(func.overloadpacket) in HOST_READS:
            frames = [f for f in traceback.extract_stack() if "/abstain/" in f.filename]
            f = frames[-1] if frames else None
            self.where[f"{f.filename.split('/abstain/')[-1]}:{f.name}" if f else "torch"] += 1
        return func(*args, **(kwargs or {}))

    def device_reads(self) -> int:
        return sum(c for k, c in self.where.items() if k.split(":")[-1] not in CPU_ONLY)


def _step_reads(loss: str, variant: str = "paper") -> Reads:
    from abstain.train import loop

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    data = TensorDataset(torch.rand(64, 3, 8, 8), torch.arange(64) % 10, 10, "rand")
    from abstain.config import LossSettings, TrainSettings, resolve_loss

    s = TrainSettings(loss=loss, epochs=1, batch_size=16, lr=0.01)
    trainer = loop.Trainer(model, data, None, s, resolve_loss(s, LossSettings(eps=0.03, steps=3, variant=variant)),
                           None, None, "cpu", None, "train")
    trainer.wrap()
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    trainer.feed.start_epoch(order)
    sums: dict[str, torch.Tensor] = {}
    trainer.step(0, 0, order, sums)
    reads = Reads()
    with reads:
        trainer.step(0, 1, order, sums)
    return reads


@pytest.mark.parametrize("loss,variant", [("trades", "paper"), ("era", "paper"), ("dga", "paper"),
                                          ("era", "authors"), ("pgd-at", "paper")])
def test_a_training_step_reads_nothing_from_the_device(loss, variant):
    reads = _step_reads(loss, variant)
    print(loss, variant, dict(reads.where))
    assert reads.device_reads() == 0, dict(reads.where)


def _public_reads(fn, *args, **kw) -> Reads:
    reads = Reads()
    with reads:
        fn(*args, **kw)
    return reads


def test_public_attacks_keep_their_checks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    x, y = torch.rand(5, 3, 2, 2), torch.arange(5) % 4
    g = torch.Generator().manual_seed(0)
    # checked: finite (1), min (1), max (1), y >= 0 (1), y < classes (1)
    r = _public_reads(pgd, model, x, y, eps=0.1, steps=2, generator=g)
    assert r.where["validate.py:check_inputs"] == 3 and r.where["attacks/core.py:check_attack_args"] == 1
    assert r.where["attacks/core.py:check_class_range"] == 1
    r = _public_reads(pgd, model, x, y, eps=0.1, steps=2, x_init=x, generator=g)
    assert r.where["attacks/core.py:check_attack_args"] == 2          # + x_init finite
    trusted = _public_reads(pgd, model, x, y, eps=0.1, steps=2, x_init=x, generator=g, check=False)
    assert trusted.device_reads() == 0, dict(trusted.where)
    # and the checks still refuse bad inputs on the public default
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        pgd(model, x + 1.0, y, eps=0.1, steps=2)
    with pytest.raises(InputError, match="NaN"):
        pgd(model, x, y, eps=0.1, steps=2, x_init=torch.full_like(x, float("nan")))
    with pytest.raises(InputError, match="class indices"):
        apgd(model, x, y + 4, eps=0.1, steps=2)


def test_trusted_path_gives_the_same_points():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4))
    x, y = torch.rand(7, 3, 2, 2), torch.arange(7) % 4
    for kw in ({"random_start": True}, {"random_start": False, "x_init": x.flip(0)}):
        a = pgd(model, x, y, eps=0.1, steps=4, generator=torch.Generator().manual_seed(3), **kw)
        b = pgd(model, x, y, eps=0.1, steps=4, generator=torch.Generator().manual_seed(3), check=False, **kw)
        assert torch.equal(a, b)

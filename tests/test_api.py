"""The Python API keeps the README's word: ``abstain.evaluate``, ``abstain.certify`` and
``abstain.compose`` take any nn.Module, any (x, y) Dataset or DataLoader, lists of ε and
``normalize``; ``compose`` takes every selector; all three return Records whose summary is
keyed by radius (float or its %g text)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import abstain
from abstain.errors import InputError
from abstain.records import Records

from abstain_fixtures import EPS, digits_models

N = 24


@pytest.fixture(scope="module")
def setup():
    train, test, robust, core = digits_models()
    x, y = test.x[:N], test.y[:N]
    return train, robust, core, x, y


@pytest.mark.parametrize("form", ["tensordataset", "dataloader"])
def test_evaluate_takes_any_dataset_and_keys_by_float(setup, form) -> None:
    _, robust, _, x, y = setup
    data = TensorDataset(x, y) if form == "tensordataset" else DataLoader(TensorDataset(x, y), batch_size=5)
    res = abstain.evaluate(robust, data, eps=[2 / 255, EPS], steps=5, attack="apgd-ce", show_progress=False)
    assert isinstance(res, Records) and res.rows == N
    part = res["partition"]
    assert part[2 / 255] == part["0.00784314"] == res.partition(2 / 255)
    assert part[EPS]["nat_acc"] == pytest.approx(float(np.mean(res["pred"] == y.numpy())))
    assert res.radii() == pytest.approx([2 / 255, 4 / 255, EPS, 2 * EPS], rel=1e-5)   # names carry %g


def test_normalize_wraps_the_model(setup) -> None:
    _, robust, _, x, y = setup
    # a model that expects (x - 0.5) / 2: normalize=(0.5, 2) must give the plain model's records

    class Expects(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z):
            return self.inner(z * 2 + 0.5)

    data = TensorDataset(x, y)
    plain = abstain.evaluate(robust, data, eps=EPS, steps=5, attack="apgd-ce", show_progress=False)
    wrapped = abstain.evaluate(Expects(robust), data, eps=EPS, steps=5, attack="apgd-ce", show_progress=False,
                               normalize=([0.5], [2.0]))
    np.testing.assert_array_equal(plain["pred"], wrapped["pred"])
    got = abstain.certify(Expects(robust), data, sigma=0.25, eps=[0.1, 0.2], n0=16, n=64, noise_batch_size=64,
                          num_classes=10, normalize=([0.5], [2.0]), device="cpu")
    ref = abstain.certify(robust, DataLoader(data, batch_size=7), sigma=0.25, eps=[0.1, 0.2], n0=16, n=64,
                          noise_batch_size=64, num_classes=10, device="cpu")
    assert isinstance(got, Records)
    np.testing.assert_array_equal(got["count"], ref["count"])
    assert got.summary["certified"][0.2] == got.summary["certified"]["0.2"]
    assert got.summary["certified"][0.1]["rob_acc"] == pytest.approx(got.partition(0.1, "certified")["rob_acc"])


@pytest.mark.parametrize("selector", ["eri", "sr", "sn", "cri"])
def test_compose_takes_every_selector_and_a_list_of_eps(setup, selector) -> None:
    train, robust, core, x, y = setup
    kw = {"sigma": 0.25, "n0": 16, "n": 64, "noise_batch_size": 64, "norm": "l2"} if selector == "cri" else {}
    if selector == "sn":
        kw.update(train=TensorDataset(train.x[:200], train.y[:200]), sn_epochs=2)
    eps = [0.05, 0.1] if selector != "cri" else [0.1, 0.2]
    res = abstain.compose(robust, core, DataLoader(TensorDataset(x, y), batch_size=10), selector=selector,
                          eps=eps, steps=4, device="cpu", **kw)
    assert isinstance(res, Records) and res.rows == N
    for e in eps:
        comp = res.summary["composition"][e]
        assert comp == res.summary["composition"][f"{e:g}"]
        assert comp["nat_acc"] == pytest.approx(float(np.mean(res[f"h.pred@{e:g}"] == y.numpy())))
        assert comp["rob_acc"] == pytest.approx(float(np.mean(res[f"h.rob_acc@{e:g}"])))
        assert 0 <= comp["rob_acc"] <= comp["rob_acc_paper"] + 1e-12 or selector != "eri"
        assert res.summary["core"][e] == res.partition(e, prefix="core")


def test_compose_refusals(setup) -> None:
    _, robust, core, x, y = setup
    with pytest.raises(InputError, match="sigma"):
        abstain.compose(robust, core, TensorDataset(x, y), selector="cri", eps=0.1)
    with pytest.raises(InputError, match="train"):
        abstain.compose(robust, core, TensorDataset(x, y), selector="sn", eps=0.1)
    with pytest.raises(InputError, match="Dataset or DataLoader"):
        abstain.compose(robust, core, [1, 2, 3], selector="eri", eps=0.1)

"""MNIST-1D (abstain.data.mnist1d): generated offline, fixed pixel map, fixed splits."""
from __future__ import annotations

import random
import socket

import numpy as np
import pytest
import torch

from abstain import data, models
from abstain.data import mnist1d as m1d


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection (the package's download path) fails the test."""
    def refuse(*a, **k):
        raise AssertionError("MNIST-1D must be generated offline; a network call was made")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import requests

    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests.Session, "request", refuse)


def test_generation_is_offline_and_keeps_the_global_rng_states(no_network):
    # the same code path as load() (make_dataset via _generate), on a small set to stay fast
    m1d._generate.cache_clear()
    np.random.seed(123)
    random.seed(123)
    np_before, py_before = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    small = m1d._generate(200)
    # make_dataset reseeds numpy/random globally; _generate restores both states
    assert np.random.rand() == np_before and random.random() == py_before
    assert small["x"].shape == (160, 40) and small["x_test"].shape == (40, 40)
    m1d._generate.cache_clear()
    again = m1d._generate(200)
    assert np.array_equal(small["x"], again["x"]) and np.array_equal(small["y_test"], again["y_test"])


def test_shape_range_and_split_sizes():
    train = data.load("mnist1d", "train")
    test = data.load("mnist1d", "test")
    assert (len(train), len(test)) == (8000, 2000)
    for ds in (train, test):
        assert ds.x.shape[1:] == (1, 40) and ds.x.dtype == torch.float32
        assert float(ds.x.min()) >= 0.0 and float(ds.x.max()) <= 1.0
        assert ds.num_classes == 10 and sorted(ds.y.unique().tolist()) == list(range(10))
    # every class is well represented in the test set
    assert int(torch.bincount(test.y, minlength=10).min()) >= 150


def test_fixed_constants_map_without_clipping():
    raw = m1d._generate()
    for key in ("x", "x_test"):
        assert raw[key].min() > m1d.MNIST1D_LO and raw[key].max() < m1d.MNIST1D_HI
    test = data.load("mnist1d", "test")
    expected = (torch.tensor(np.array(raw["x_test"]), dtype=torch.float64) + 6.0) / 12.0
    assert torch.allclose(test.x[:, 0].double(), expected, atol=1e-6)
    # the standardised signal: mean ≈ 0.5, std ≈ 1/12 in pixel space (the models' Normalize)
    allx = torch.cat([data.load("mnist1d", "train").x, test.x]).double()
    assert float(allx.mean()) == pytest.approx(m1d.MNIST1D_MEAN, abs=1e-3)
    assert float(allx.std()) == pytest.approx(m1d.MNIST1D_STD, rel=1e-3)


def test_deterministic_and_independent_of_seed_argument():
    a = data.load("mnist1d", "test", seed=0)
    c = data.load("mnist1d", "test", seed=5)
    assert torch.equal(a.x, c.x) and torch.equal(a.y, c.y)
    tr = data.load("mnist1d", "train")
    # train and test do not share samples
    assert not bool((tr.x[:, None, 0, :5] == a.x[None, :200, 0, :5]).all(-1).any())
    # the cached arrays cannot be changed through a loaded dataset
    a.x[0, 0, 0] = 0.123
    assert float(data.load("mnist1d", "test").x[0, 0, 0]) != pytest.approx(0.123)


def test_cnn1d_takes_the_signals():
    test = data.load("mnist1d", "test")
    net = models.create("cnn1d", 10)
    out = net(test.x[:7])
    assert out.shape == (7, 10) and torch.isfinite(out).all()
    assert models.create("cnn1d", 3, length=33)(torch.rand(2, 1, 33)).shape == (2, 3)

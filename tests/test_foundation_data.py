import pytest
import torch

from abstain import data
from abstain.errors import DataError


def test_gauss3_sizes_classes_and_determinism():
    tr = data.load("gauss3", "train", seed=0)
    te = data.load("gauss3", "test", seed=0)
    assert len(tr) == 1000 and len(te) == 1000
    assert tr.input_shape == (2,) and tr.num_classes == 3
    assert torch.equal(tr.x, data.load("gauss3", "train", seed=0).x)
    assert not torch.equal(tr.x, te.x)
    assert not torch.equal(tr.x, data.load("gauss3", "train", seed=1).x)
    counts = torch.bincount(tr.y, minlength=3).float() / 1000
    # mixture weights 31/64, 1/2, 1/64 (authors' generator); binomial sd ~ 0.016
    assert abs(counts[0] - 31 / 64) < 0.06 and abs(counts[1] - 0.5) < 0.06 and counts[2] < 0.04
    assert tr.x.min() >= 0 and tr.x.max() <= 1
    # class means as documented
    for c, mean in enumerate(((0.25, 0.25), (0.75, 0.75), (0.55, 0.80))):
        assert torch.allclose(tr.x[tr.y == c].mean(0), torch.tensor(mean), atol=0.02)


def test_digits_split_fixed_and_stratified():
    tr, te = data.load("digits", "train"), data.load("digits", "test")
    assert len(tr) + len(te) == 1797 and len(te) == 450
    assert tr.input_shape == (1, 8, 8)
    assert tr.x.min() >= 0 and tr.x.max() <= 1 and tr.x.max() > 0.99
    assert torch.equal(te.x, data.load("digits", "test", seed=5).x)  # split independent of seed
    frac = torch.bincount(te.y, minlength=10).float() / len(te)
    assert (frac - 0.1).abs().max() < 0.01


def test_balanced_subset_is_balanced_and_seeded():
    y = torch.arange(100) % 4
    idx = data.balanced_subset(y, 20, 4, seed=3)
    assert len(idx) == 20 and len(set(idx.tolist())) == 20
    assert torch.bincount(y[idx], minlength=4).tolist() == [5, 5, 5, 5]
    assert torch.equal(idx, data.balanced_subset(y, 20, 4, seed=3))
    assert not torch.equal(idx, data.balanced_subset(y, 20, 4, seed=4))


def test_train_val_split_disjoint():
    tr, va = data.train_val_split(50, 0.2, seed=1)
    assert len(va) == 10 and len(tr) == 40
    assert set(tr.tolist()).isdisjoint(va.tolist())


@pytest.mark.parametrize("name,split,msg", [
    ("imagenet", "train", "unknown dataset"),
    ("digits", "validation", "unknown split"),
    ("cifar10", "train", "root"),
])
def test_bad_dataset_arguments(name, split, msg):
    with pytest.raises(DataError, match=msg):
        data.load(name, split)


def test_dataset_refuses_out_of_range_inputs():
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        data.TensorDataset(torch.full((3, 2), 2.0), torch.zeros(3, dtype=torch.long), 2, "x")
    with pytest.raises(DataError, match="labels"):
        data.TensorDataset(torch.zeros(3, 2), torch.tensor([0, 1, 5]), 2, "x")

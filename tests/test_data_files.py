"""CIFAR-10/100 read from a tiny fake in the exact distributed pickle format."""
import pickle
import re
import struct

import numpy as np
import pytest
import torch

from abstain import data
from abstain.errors import DataError


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` opcodes (SHORT_BINSTRING/BINSTRING), as cPickle did
    for the published CIFAR files, instead of Python 3's ``_codecs.encode`` calls."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _py2_dump(obj, path):
    import io

    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # numpy 1.x (which wrote the published files) names the reconstructor numpy.core.multiarray
    raw = buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"_codecs" not in raw
    path.write_bytes(raw)


def _fake_cifar10(root, n_train=6, n_test=4, seed=0):
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    batches = {}
    for name, n in [(f"data_batch_{i}", n_train) for i in range(1, 6)] + [("test_batch", n_test)]:
        arr = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        _py2_dump({b"batch_label": name.encode(), b"labels": labels, b"data": arr,
                   b"filenames": [f"img_{i}.png".encode() for i in range(n)]}, d / name)
        batches[name] = (arr, labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _py2_dump({b"num_cases_per_batch": n_train, b"label_names": names, b"num_vis": 3072}, d / "batches.meta")
    return d, batches


def test_cifar10_reads_exact_pixels_labels_and_names(tmp_path):
    d, batches = _fake_cifar10(tmp_path)
    tr = data.load("cifar10", "train", root=str(tmp_path))  # parent of cifar-10-batches-py
    te = data.load("cifar10", "test", root=str(d))  # the folder itself
    assert len(tr) == 30 and len(te) == 4 and tr.input_shape == (3, 32, 32) and tr.num_classes == 10
    arr, labels = batches["data_batch_2"]
    # row layout: 1024 red, then green, then blue values, each row-major 32x32
    i = 6 + 3  # 4th image of the second batch
    c, h, w = 1, 7, 30
    assert tr.x[i, c, h, w].item() == pytest.approx(arr[3, c * 1024 + h * 32 + w] / 255.0)
    assert torch.equal(tr.x[6:12], torch.from_numpy(arr).view(-1, 3, 32, 32).float() / 255)
    assert tr.y[6:12].tolist() == labels
    assert te.y.tolist() == batches["test_batch"][1]
    assert tr.classes[0] == "airplane" and tr.classes[9] == "truck"
    assert tr.x.dtype == torch.float32 and 0 <= tr.x.min() and tr.x.max() <= 1


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    for split, n in (("train", 5), ("test", 3)):
        _py2_dump({b"filenames": [b"x"] * n, b"batch_label": b"b", b"fine_labels": rng.integers(0, 100, n).tolist(),
                   b"coarse_labels": rng.integers(0, 20, n).tolist(),
                   b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}, d / split)
    _py2_dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)],
               b"coarse_label_names": [f"s{i}".encode() for i in range(20)]}, d / "meta")
    tr = data.load("cifar100", "train", root=str(tmp_path))
    assert len(tr) == 5 and tr.num_classes == 100 and tr.classes[42] == "c42"
    assert tr.y.tolist() == pickle.loads((d / "train").read_bytes(), encoding="bytes")[b"fine_labels"]
    assert len(data.load("cifar100", "test", root=str(d))) == 3


def test_missing_file_is_named(tmp_path):
    d, _ = _fake_cifar10(tmp_path)
    (d / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"missing dataset file .*data_batch_3"):
        data.load("cifar10", "train", root=str(tmp_path))
    with pytest.raises(DataError, match=r"missing dataset file .*cifar-100-python.*train"):
        data.load("cifar100", "train", root=str(tmp_path))
    (d / "data_batch_1").unlink()  # root = the folder itself: the message names the file there
    with pytest.raises(DataError, match=re.escape(f"missing dataset file {d / 'data_batch_1'} (")):
        data.load("cifar10", "train", root=str(d))


def test_truncated_file(tmp_path):
    d, _ = _fake_cifar10(tmp_path)
    raw = (d / "test_batch").read_bytes()
    (d / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"test_batch is truncated or corrupt"):
        data.load("cifar10", "test", root=str(d))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_never_runs(tmp_path):
    d, _ = _fake_cifar10(tmp_path)
    marker = tmp_path / "marker"
    with open(d / "test_batch", "wb") as fh:
        pickle.dump({b"data": _Evil(str(marker)), b"labels": [0]}, fh, protocol=2)
    with pytest.raises(DataError, match=r"test_batch is not a CIFAR batch .*refusing to load global"):
        data.load("cifar10", "test", root=str(d))
    assert not marker.exists()


def test_wrong_array_type_is_refused(tmp_path):
    d, _ = _fake_cifar10(tmp_path)
    _py2_dump({b"data": np.zeros((2, 3072), dtype=np.int64), b"labels": [0, 1]}, d / "test_batch")
    with pytest.raises(DataError, match="uint8 array"):
        data.load("cifar10", "test", root=str(d))
    _py2_dump({b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0]}, d / "test_batch")
    with pytest.raises(DataError, match="2 images but"):
        data.load("cifar10", "test", root=str(d))

"""CIFAR-10 / CIFAR-100 from the python-pickle layout in which they are distributed.

``cifar-10-python.tar.gz`` extracts to ``cifar-10-batches-py/`` with ``data_batch_1`` ..
``data_batch_5``, ``test_batch`` and ``batches.meta``; ``cifar-100-python.tar.gz`` to
``cifar-100-python/`` with ``train``, ``test`` and ``meta`` (https://www.cs.toronto.edu/~kriz/cifar.html).
Each file is a Python-2 pickle of a dict with bytes keys: ``data`` (a numpy uint8 array
N x 3072, channel-major R, G, B planes of 32x32), ``labels`` (CIFAR-10) or
``fine_labels``/``coarse_labels`` (CIFAR-100) as lists of ints, ``filenames`` and
``batch_label``; the meta files hold lists of bytes class names.

Unpickling is restricted (:class:`RestrictedUnpickler`): the only globals these files
reference are numpy's array reconstruction (``numpy.core.multiarray._reconstruct``,
``numpy.ndarray``, ``numpy.dtype``); everything else is refused, so a crafted file cannot
run code. Arrays must come out as uint8, so object arrays are refused too.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .base import TensorDataset

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR100_FILES = {"train": ["train"], "test": ["test"]}


def _numpy_reconstruct() -> Any:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct  # noqa: PLC0415  optional: numpy >= 2 location
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # noqa: PLC0415  optional: numpy 1.x location
    return _reconstruct


# (module, name) -> the object; both numpy 1 ("numpy.core") and numpy 2 ("numpy._core")
# spellings of the array reconstructor, as pickles written by either refer to one of them.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle references a global outside the allowed set."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy's array reconstruction globals."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"refusing to load global {module}.{name}") from None


def read_pickle(path: Path) -> dict:
    """Read one CIFAR pickle with the restricted unpickler (``encoding="bytes"``)."""
    if not path.is_file():
        raise DataError(f"missing dataset file {path}")
    try:
        with open(path, "rb") as fh:
            obj = RestrictedUnpickler(io.BufferedReader(fh), encoding="bytes").load()
    except RefusedGlobal as e:
        raise DataError(f"{path} is not a CIFAR batch (unsafe pickle: {e})") from None
    except Exception as e:  # noqa: BLE001 - restricted: no code ran; any failure means a bad file
        # (EOF/Value/Type/Index/Attribute/Memory/Overflow errors from truncated or corrupted bytes)
        raise DataError(f"{path} is truncated or corrupt ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR batch (expected a dict, got {type(obj).__name__})")
    return obj


def _field(obj: dict, key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in obj:
            return obj[k]
    raise DataError(f"{path} lacks the field {key!r}; is it a CIFAR file?")


def _find_dir(root: str | os.PathLike, folder: str, needed: list[str]) -> Path:
    """``root`` itself when it holds the files, else ``root/folder``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root {root} is not a directory")
    for cand in (root, root / folder):
        if (cand / needed[0]).is_file():
            return cand
    where = root if root.name == folder else root / folder
    raise DataError(f"missing dataset file {where / needed[0]} (expected the extracted "
                    f"{folder}/ folder, or its parent, as root)")


def _read_batches(directory: Path, files: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in files:
        path = directory / name
        obj = read_pickle(path)
        data = _field(obj, "data", path)
        labels = _field(obj, label_key, path)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{path}: 'data' must be a uint8 array of N x 3072, got "
                            f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path}: {data.shape[0]} images but {labels.shape} labels")
        xs.append(data)
        ys.append(labels.astype(np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _class_names(path: Path, key: str, k: int) -> list[str]:
    if not path.is_file():  # the meta file only names classes; indices work without it
        return [str(i) for i in range(k)]
    names = _field(read_pickle(path), key, path)
    try:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    except UnicodeDecodeError:
        raise DataError(f"{path}: class names are not UTF-8 text (corrupt file?)") from None
    if len(names) != k:
        raise DataError(f"{path}: {len(names)} class names, expected {k}")
    return names


def _to_dataset(data: np.ndarray, labels: np.ndarray, k: int, name: str, classes: list[str]) -> TensorDataset:
    x = torch.from_numpy(data).view(-1, 3, 32, 32).float().div_(255.0)
    return TensorDataset(x, torch.from_numpy(labels), k, name, classes)


def cifar10(split: str = "train", root: str | os.PathLike = ".", seed: int = 0) -> TensorDataset:
    """CIFAR-10: 50000 train / 10000 test images (3, 32, 32) in [0, 1], 10 classes.

    ``root`` is the extracted ``cifar-10-batches-py`` folder or its parent. The split is the
    dataset's own; ``seed`` is unused (kept for the common loader signature)."""
    files = CIFAR10_FILES[split]
    d = _find_dir(root, CIFAR10_DIR, files)
    data, labels = _read_batches(d, files, "labels")
    return _to_dataset(data, labels, 10, "cifar10", _class_names(d / "batches.meta", "label_names", 10))


def cifar100(split: str = "train", root: str | os.PathLike = ".", seed: int = 0) -> TensorDataset:
    """CIFAR-100 (fine labels): 50000 train / 10000 test images (3, 32, 32), 100 classes.

    ``root`` is the extracted ``cifar-100-python`` folder or its parent."""
    files = CIFAR100_FILES[split]
    d = _find_dir(root, CIFAR100_DIR, files)
    data, labels = _read_batches(d, files, "fine_labels")
    return _to_dataset(data, labels, 100, "cifar100", _class_names(d / "meta", "fine_label_names", 100))

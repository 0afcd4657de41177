"""scikit-learn's bundled 8x8 digits (shipped with the package: no download)."""
from __future__ import annotations

import numpy as np
import torch

from .base import TensorDataset

DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


def digits(split: str = "train", seed: int = 0) -> TensorDataset:
    """1797 grey 8x8 digits scaled from [0, 16] to [0, 1], shape (1, 8, 8).

    A fixed stratified split (25% test, ``random_state=0``) independent of
    ``seed``, so every experiment sees the same test set: 1347 train, 450 test.
    """
    from sklearn.datasets import load_digits  # noqa: PLC0415  heavy: scikit-learn, digits only
    from sklearn.model_selection import train_test_split  # noqa: PLC0415  heavy: scikit-learn, digits only

    bunch = load_digits()
    x = bunch.images.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=DIGITS_TEST_FRACTION, stratify=y,
                              random_state=DIGITS_SPLIT_SEED)
    pick = {"train": np.sort(tr), "test": np.sort(te)}[split]
    return TensorDataset(torch.from_numpy(x[pick]).unsqueeze(1), torch.from_numpy(y[pick]), 10,
                         "digits")

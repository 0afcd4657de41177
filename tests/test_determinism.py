"""Same seed, same records, on CPU (issue 11, part 7).

Each command runs twice in this process through :func:`abstain.cli.main`, with torch's,
NumPy's and Python's global random states scrambled in between, so the results may
depend only on the seeds the user gives (not on what ran before in the process):
training from scratch (1 epoch) gives bitwise-equal weights, evaluation and
certification give equal records (certify: every column but the wall-clock
``seconds``). A different certification seed gives different noise counts (the seed is
really used).
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from abstain import cli
from abstain.records import read_records

from reliability_helpers import one_thread  # noqa: F401  (autouse fixture)

CONFIG = """
[data]
name = "digits"
val_fraction = 0.1
[model]
arch = "cnn"
[train]
loss = "trades"
schedule = "constant"
epochs = 1
batch_size = 256
val_steps = 2
lr = 0.05
seed = 7
[loss]
eps = 0.1
steps = 2
"""


def _scramble(k: int) -> None:
    torch.manual_seed(1000 + k)
    torch.rand(17 * (k + 1))
    np.random.seed(2000 + k)
    random.seed(3000 + k)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("det")
    (d / "c.toml").write_text(CONFIG)
    out = []
    for k in range(2):
        _scramble(k)
        run = d / f"run{k}"
        assert cli.main(["train", "--config", str(d / "c.toml"), "--out", str(run), "--device", "cpu"]) == 0
        out.append(run)
    return out


def test_training_from_scratch_is_deterministic(runs):
    a, b = (load_file(str(r / "model.safetensors")) for r in runs)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"same seed, different weights: {differ}"


def test_evaluate_is_deterministic(runs, tmp_path):
    recs = []
    for k in range(2):
        _scramble(10 + k)
        run = shutil.copytree(runs[0], tmp_path / f"e{k}", ignore=shutil.ignore_patterns("records"))
        assert cli.main(["evaluate", "--run", str(run), "--eps", "0.1", "--steps", "5", "--samples", "40",
                         "--seed", "3", "--device", "cpu"]) == 0
        recs.append(read_records(run / "records" / "evaluate.csv"))
    assert list(recs[0]) == list(recs[1])
    for col in recs[0]:
        assert np.array_equal(recs[0][col], recs[1][col]), col


def _certify(run: Path, seed: int, samples: int = 20, n: int = 200) -> dict:
    assert cli.main(["certify", "--run", str(run), "--sigma", "0.25", "--eps", "0.2", "--n0", "16",
                     "--n", str(n), "--samples", str(samples), "--noise-batch-size", "100", "--seed", str(seed),
                     "--device", "cpu", "--overwrite"]) == 0
    return read_records(run / "records" / "certify.csv")


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory) -> Path:
    """A run directory holding a fixed random-init digits CNN: its smoothed predictions vary
    with the noise (a briefly trained model may be constant, making counts seed-free)."""
    from abstain import checkpoint, models

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("noisy") / "run"
    checkpoint.save_checkpoint(d, models.create("cnn", 10, width=4),
                               {"arch": "cnn", "num_classes": 10, "dataset": "digits", "data_root": None,
                                "model_kwargs": {"width": 4}})
    return d


def test_certify_is_deterministic(runs, noisy_run, tmp_path):
    for src in (runs[0], noisy_run):
        recs = []
        for k in range(2):
            _scramble(20 + k)
            run = shutil.copytree(src, tmp_path / f"{src.parent.name}-c{k}", ignore=shutil.ignore_patterns("records"))
            recs.append(_certify(run, seed=4))
        for col in recs[0]:
            if col != "seconds":
                assert np.array_equal(recs[0][col], recs[1][col]), col
    # the seed is really used: the whole test split (same inputs), other seed -> other counts
    a, b = (_certify(shutil.copytree(noisy_run, tmp_path / f"all-{seed}", ignore=shutil.ignore_patterns("records")),
                     seed=seed, samples=450, n=40) for seed in (4, 5))
    assert np.array_equal(a["index"], b["index"])
    assert not np.array_equal(a["count"], b["count"]), "the certification seed has no effect on the noise"

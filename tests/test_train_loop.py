"""The trainer: resume equivalence (bitwise on CPU), schedules, model selection on the
validation split, the epoch log, SIGINT and kill -9."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from abstain import models
from abstain.checkpoint import load_checkpoint, read_meta
from abstain.config import LossSettings, TrainSettings
from abstain.data import load, train_val_split
from abstain.errors import CheckpointError, ConfigError
from abstain.train import TrainingInterrupted, epoch_order, fit, lr_at, read_log

torch.set_num_threads(1)
META = {"arch": "mlp", "num_classes": 3, "dataset": "gauss3", "model_kwargs": {"in_features": 2}}


def _data(n: int = 200):
    full = load("gauss3", "train", seed=0)
    tr, va = train_val_split(n, 0.25, seed=0)
    return full.subset(tr), full.subset(va)


def _fit(out, *, epochs=2, loss="trades", **kw):
    tr, va = _data()
    torch.manual_seed(123)
    model = models.create("mlp", 3, in_features=2)
    train = dict(loss=loss, epochs=epochs, batch_size=15, lr=0.05, schedule="finetune", seed=7, val_steps=3)
    train.update({k: kw.pop(k) for k in list(kw) if k in TrainSettings.keys_()})
    return fit(model, tr, TrainSettings(**train), LossSettings(eps=0.1, steps=3), val_data=va, out=out,
               meta=META, **kw)


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    model = _fit(out)
    return out, {k: v.clone() for k, v in model.state_dict().items()}


def _last_weights(out: Path) -> dict:
    from abstain.checkpoint import load_train_state

    return load_train_state(out)["model_last"]


@pytest.mark.parametrize("stop_at", [(0, 9), (1, 3)], ids=["end-of-epoch-1", "mid-epoch-2"])
def test_resume_reaches_the_same_weights_bitwise(tmp_path, reference, stop_at):
    ref_out, ref_best = reference
    with pytest.raises(TrainingInterrupted, match="--resume"):
        _fit(tmp_path, should_stop=lambda e, b: (e, b) == stop_at)
    resumed = _fit(tmp_path)
    assert _same(_last_weights(tmp_path), _last_weights(ref_out))
    assert _same(resumed.state_dict(), ref_best)
    assert read_meta(tmp_path)["epoch"] == read_meta(ref_out)["epoch"]
    log_a, log_b = read_log(tmp_path), read_log(ref_out)
    assert [r["epoch"] for r in log_a] == [1, 2]
    for a, b in zip(log_a, log_b):
        assert a["val_nat_acc"] == b["val_nat_acc"] and a["val_rob_acc"] == b["val_rob_acc"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)


def test_real_sigint_stops_at_next_batch_and_resumes(tmp_path, reference):
    ref_out, ref_best = reference
    calls = {"n": 0}

    def augment(x, generator):  # sends SIGINT to ourselves during batch 4 of epoch 1
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return x

    with pytest.raises(TrainingInterrupted):
        _fit(tmp_path, augment=augment)
    assert calls["n"] == 4  # stopped right after the batch in which the signal arrived
    from abstain.checkpoint import load_train_state
    st = load_train_state(tmp_path)
    assert (st["epoch"], st["batch"]) == (0, 4)
    resumed = _fit(tmp_path, augment=lambda x, g: x)
    assert _same(resumed.state_dict(), ref_best)


SCRIPT = r"""
import sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
import test_train_loop as t
def slow(x, g):
    time.sleep(0.08)
    return x
t._fit({out!r}, augment=slow)
"""


def test_kill_9_after_first_epoch_then_resume(tmp_path, reference):
    ref_out, ref_best = reference
    out = tmp_path / "run"
    script = SCRIPT.format(tests=str(Path(__file__).parent), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if len(read_log(out)) >= 1:
                break
            assert proc.poll() is None, "the training subprocess ended early"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert [r["epoch"] for r in read_log(out)] == [1]  # killed during epoch 2
    resumed = _fit(out, augment=lambda x, g: x)
    assert _same(resumed.state_dict(), ref_best)
    assert _same(_last_weights(out), _last_weights(ref_out))


def test_finished_run_is_returned_without_training(tmp_path, reference):
    ref_out, ref_best = reference
    import shutil

    shutil.copytree(ref_out, tmp_path / "r")
    before = (tmp_path / "r" / "train_state.pt").stat().st_mtime_ns
    model = _fit(tmp_path / "r", augment=lambda x, g: pytest.fail("trained again"))
    assert _same(model.state_dict(), ref_best)
    assert (tmp_path / "r" / "train_state.pt").stat().st_mtime_ns == before


def test_resume_with_other_settings_is_refused(tmp_path):
    with pytest.raises(TrainingInterrupted):
        _fit(tmp_path, should_stop=lambda e, b: (e, b) == (0, 2))
    with pytest.raises(CheckpointError, match="lr"):
        _fit(tmp_path, lr=0.01)


def test_best_epoch_is_selected_on_validation_and_saved(reference):
    out, best = reference
    log = read_log(out)
    assert {"ce", "kl", "loss", "lr", "val_nat_acc", "val_rob_acc", "val_rob_inacc"} <= set(log[0])
    scores = [r["val_score"] for r in log]
    assert all(r["val_score"] == pytest.approx(r["val_rob_acc"]) for r in log)  # trades: rob_acc
    meta = read_meta(out)
    assert meta["epoch"] == 1 + scores.index(max(scores))
    model, _ = load_checkpoint(out)
    assert _same(model.state_dict(), best)
    assert meta["arch"] == "mlp" and meta["selection"] == "rob_acc"


def test_select_last_and_no_validation(tmp_path):
    tr, _ = _data()
    m = fit(models.create("mlp", 3, in_features=2), tr,
            TrainSettings(loss="standard", epochs=2, batch_size=50, lr=0.1), out=tmp_path, meta=META)
    assert read_meta(tmp_path)["epoch"] == 2
    assert _same(m.state_dict(), _last_weights(tmp_path))


@pytest.mark.parametrize("schedule,expected", [
    ("scratch", {0: 0.1, 74: 0.1, 75: 0.01, 89: 0.01, 90: 0.001, 99: 0.001}),
    ("finetune", {0: 0.1, 37: 0.1, 38: 0.01, 99: 0.01}),
    ("constant", {0: 0.1, 99: 0.1}),
])
def test_lr_schedules_of_appendix_a2(schedule, expected):
    epochs = 100 if schedule != "finetune" else 50
    for epoch, lr in expected.items():
        if epoch < epochs:
            assert lr_at(schedule, epoch, epochs, 0.1) == pytest.approx(lr)


def test_epoch_order_is_a_seeded_permutation():
    a, b = epoch_order(100, 1, 0), epoch_order(100, 1, 0)
    assert torch.equal(a, b) and torch.equal(torch.sort(a).values, torch.arange(100))
    assert not torch.equal(a, epoch_order(100, 1, 1))
    assert not torch.equal(a, epoch_order(100, 2, 0))


def test_bad_fit_arguments_are_config_errors(tmp_path):
    tr, _ = _data()
    m = models.create("mlp", 3, in_features=2)
    for kw, word in (({"lr": 0.0}, "lr"), ({"epochs": 0}, "epochs"), ({"batch_size": -1}, "batch_size"),
                     ({"schedule": "cosine"}, "schedule"), ({"loss": "bogus"}, "loss must be one of")):
        args = dict(loss="standard", epochs=1, batch_size=10, lr=0.1)
        args.update(kw)
        with pytest.raises(ConfigError, match=word):
            fit(m, tr, TrainSettings(**args))
    with pytest.raises(ConfigError, match="eps is required"):
        fit(m, tr, TrainSettings(loss="trades", epochs=1, batch_size=10, lr=0.1))
    with pytest.raises(ConfigError, match="TrainSettings"):
        fit(m, tr, {"loss": "standard"})
    with pytest.raises(ConfigError, match="meta"):
        fit(m, tr, TrainSettings(loss="standard", epochs=1, batch_size=10, lr=0.1), out=tmp_path)


def test_stage_reports_recompute_tables_from_records(tmp_path):
    """fig1 / digits-finetune reports: every number comes from records/<variant>-s<seed>.csv."""
    import numpy as np

    from abstain.records import write_records
    from abstain.stages import get as get_stage

    rec = tmp_path / "records"
    # 10 samples: 6 correct (4 robust), 4 wrong (1 robust at eps, robust flags at 2eps subsets)
    label = np.zeros(10, dtype=int)
    pred = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    r1 = np.array([1, 1, 1, 1, 0, 0, 1, 0, 0, 0], dtype=bool)
    r2 = np.array([1, 1, 0, 0, 0, 0, 1, 0, 0, 0], dtype=bool)
    for seed, flip in ((0, False), (1, True)):
        rr = r1.copy()
        if flip:
            rr[6] = False  # seed 1: no robust-inaccurate sample
        write_records(rec / f"era-s{seed}.csv", {"index": np.arange(10), "label": label, "pred": pred,
                                                 "robust@0.1": rr, "robust@0.2": r2 & rr})
    fig1 = get_stage("fig1").report(tmp_path)
    table = next(b for b in fig1 if b["kind"] == "table")
    row = next(r for r in table["rows"] if r[0] == "era")
    assert row[1] == "2" and row[2] == "60.0 ± 0.0" and row[3] == "40.0 ± 0.0"
    assert row[4] == "5.0 ± 5.0"  # rob_inacc: 10% and 0%
    ft = get_stage("digits-finetune").report(tmp_path)
    table = next(b for b in ft if b["kind"] == "table")
    row = next(r for r in table["rows"] if r[0] == "era")
    cols = table["columns"]
    # S_ERI: robust selection = robust at 2eps (and selected): seed 0 -> {0, 1, 6}, seed 1 -> {0, 1}
    assert row[cols.index("rob_sel %")] == "25.0 ± 5.0"
    assert row[cols.index("sel_rob_acc %")] == "83.3 ± 16.7"

"""DDP training with 2 gloo processes on CPU (torch.multiprocessing spawn): the weights of one
process with the whole (doubled) batch, rank-0 checkpointing, and resume with another world
size."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from abstain import models
from abstain.config import LossSettings, TrainSettings
from abstain.checkpoint import load_train_state, read_meta
from abstain.data import load, train_val_split
from abstain.train import TrainingInterrupted, fit
from abstain.train.feed import BatchFeed

from reliability_helpers import free_port

META = {"arch": "mlp", "num_classes": 3, "dataset": "gauss3", "model_kwargs": {"in_features": 2}}


def _data():
    full = load("gauss3", "train", seed=0)
    tr, va = train_val_split(160, 0.25, seed=0)
    return full.subset(tr), full.subset(va)


def _run(out, loss="standard", epochs=2, batch_size=24, **kw):
    tr, va = _data()
    torch.manual_seed(11)
    model = models.create("mlp", 3, in_features=2)
    train = TrainSettings(loss=loss, epochs=epochs, batch_size=batch_size, lr=0.1, momentum=0.9,
                          schedule="constant", seed=3, val_steps=2,
                          **{k: kw.pop(k) for k in list(kw) if k in TrainSettings.keys_()})
    return fit(model, tr, train, LossSettings(eps=0.1, steps=2), val_data=va, out=out, meta=META, **kw)


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    try:
        m = _run(os.path.join(tmp, "ddp"))
        torch.save(m.state_dict(), os.path.join(tmp, f"std-rank{rank}.pt"))
        m = _run(os.path.join(tmp, "ddp-trades"), loss="trades", epochs=1)
        torch.save(m.state_dict(), os.path.join(tmp, f"trades-rank{rank}.pt"))
        try:
            _run(os.path.join(tmp, "ddp-stopped"), should_stop=lambda e, b: (e, b) == (0, 2))
        except TrainingInterrupted:
            pass
    finally:
        from abstain.distributed import shutdown

        shutdown(synchronise=True)      # as the CLI ends a torchrun job




@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_worker, args=(2, free_port(), str(tmp)), nprocs=2, join=True,
                       start_method="spawn")
    return tmp


def _distance(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    """One process with the whole batch, trained once for the module (``_run`` on it loads it)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("single") / "single"
    _run(out)
    return out


@pytest.fixture(scope="module")
def order_tolerance(tmp_path_factory, single_run) -> float:
    """How far two float32 trainings that differ only in the order of their sums may end apart.

    DDP computes the same mean gradient as one process with the whole batch, summed in another
    order (two half-batch means, all-reduced): equal in exact arithmetic, apart by rounding,
    which the following steps carry on. Its size depends on this training (data, steps, lr),
    so it is measured on it: the same one-process training with each batch's rows reversed is
    the same computation in another summation order. The tolerance is 8 times that distance,
    and at least 8 float32 ulps of the largest weight (where reversal happens to round alike)."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("order")
    single = _run(single_run).state_dict()
    original = BatchFeed.__call__

    def reversed_rows(self, *args):
        x, y = original(self, *args)
        return x.flip(0), y.flip(0)

    with pytest.MonkeyPatch.context() as mp_:
        mp_.setattr(BatchFeed, "__call__", reversed_rows)
        twin = _run(tmp / "twin").state_dict()
    largest = max(float(v.abs().max()) for v in single.values())
    return 8 * max(_distance(single, twin), torch.finfo(torch.float32).eps * largest)


def test_two_processes_match_one_process_with_the_whole_batch(ddp_runs, tmp_path, order_tolerance,
                                                               single_run):
    torch.set_num_threads(1)
    single = _run(single_run).state_dict()
    r0 = torch.load(ddp_runs / "std-rank0.pt", weights_only=True)
    r1 = torch.load(ddp_runs / "std-rank1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)           # DDP keeps ranks in sync
    assert _distance(r0, single) <= order_tolerance              # = one process, batch 24 = 2 x 12
    last_ddp = load_train_state(ddp_runs / "ddp")["model_last"]
    last_single = load_train_state(single_run)["model_last"]
    assert _distance(last_ddp, last_single) <= order_tolerance
    _run(tmp_path / "half", batch_size=12)                       # one process, per-rank batch:
    half = load_train_state(tmp_path / "half")["model_last"]    # another training, far outside
    assert _distance(last_ddp, half) > 100 * order_tolerance
    assert read_meta(ddp_runs / "ddp")["epoch"] == read_meta(single_run)["epoch"]
    assert not any(p.name.startswith(".") for p in (ddp_runs / "ddp").iterdir())  # no temp files left


def test_ddp_adversarial_loss_runs_and_ranks_agree(ddp_runs):
    r0 = torch.load(ddp_runs / "trades-rank0.pt", weights_only=True)
    r1 = torch.load(ddp_runs / "trades-rank1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert len((ddp_runs / "ddp-trades" / "log.jsonl").read_text().splitlines()) == 1


def test_resume_with_another_world_size(ddp_runs, order_tolerance, single_run):
    torch.set_num_threads(1)
    st = load_train_state(ddp_runs / "ddp-stopped")
    assert (st["epoch"], st["batch"], st["world_size"]) == (0, 3, 2)
    _run(ddp_runs / "ddp-stopped")                               # 1 process continues
    assert _distance(load_train_state(ddp_runs / "ddp-stopped")["model_last"],
                     load_train_state(single_run)["model_last"]) <= order_tolerance

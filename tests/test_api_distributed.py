"""The Python API under torchrun (issue 26, item 4): ``abstain.evaluate`` and
``abstain.certify`` share their rows out over the ranks through the one ``ChunkedJob`` and
every rank gets exactly the records of one process."""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.multiprocessing as mp

from reliability_helpers import free_port


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(23, 2, generator=g)                 # an odd count: uneven shares
    return torch.utils.data.TensorDataset(x, torch.randint(0, 3, (23,), generator=g))


def _both() -> dict[str, dict[str, np.ndarray]]:
    import abstain

    ev = abstain.evaluate(_model(), _data(), eps=0.05, steps=3, device="cpu", show_progress=False)
    ce = abstain.certify(_model(), _data(), sigma=0.25, eps=0.1, n0=8, n=64, noise_batch_size=64, chunk=4,
                         num_classes=3, device="cpu")
    def plain(cols):        # object (string) columns as fixed-width text, for np.savez without pickles
        return {k: (v.astype(str) if v.dtype == object else v) for k, v in cols.items() if k != "seconds"}

    return {"evaluate": plain(ev.columns), "certify": plain(ce.columns)}


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "ABSTAIN_DIST_BACKEND": "gloo"})
    torch.set_num_threads(1)
    from abstain import distributed

    distributed.init_from_env(torch.device("cpu"))
    try:
        assert distributed.is_distributed()
        np.savez(os.path.join(tmp, f"rank{rank}.npz"),
                 **{f"{job}:{k}": v for job, cols in _both().items() for k, v in cols.items()})
    finally:
        distributed.shutdown(synchronise=True)




def test_the_api_under_two_ranks_gives_the_records_of_one_process(tmp_path) -> None:
    one = _both()
    mp.start_processes(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    for rank in (0, 1):
        with np.load(tmp_path / f"rank{rank}.npz", allow_pickle=False) as z:
            for job, cols in one.items():
                for k, v in cols.items():
                    got = z[f"{job}:{k}"]
                    assert got.dtype == v.dtype and np.array_equal(got, v), (rank, job, k)

"""Sharded evaluation and certification under torchrun (issue 10, part 2).

Two gloo processes on CPU (``python -m torch.distributed.run --standalone
--nproc-per-node 2 -m abstain -- evaluate|certify ...``) must write records EXACTLY equal
to one process: every column, every row (an odd number of samples, so the shards are
uneven). The certify records carry a per-row wall-clock column ``seconds``; it is a
timing, not a result, and is the only column left out of the comparison.

Note the ``--`` after ``-m abstain``: without it torchrun's own argparse takes ``--run``
as an ambiguous abbreviation of its ``--run-path`` option and exits with an error.
(The DDP *training* equivalence is tested by the training slice.)
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from abstain import cli
from abstain.records import read_records

from reliability_helpers import cli_env, gauss3_config, one_thread  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("dist")
    (d / "tiny.toml").write_text(gauss3_config(epochs=2, batch_size=64))
    assert cli.main(["train", "--config", str(d / "tiny.toml"), "--out", str(d / "run"), "--device", "cpu"]) == 0
    return d / "run"


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "abstain", "--", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=cli_env())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("records", "results.json"))
    return dst


def _assert_records_equal(a: dict, b: dict, ignore: tuple[str, ...] = ()) -> None:
    assert list(a) == list(b)
    for k in a:
        if k in ignore:
            continue
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_sharded_evaluate_equals_one_process(run_dir, tmp_path):
    # 7 chunks of 10 (the last of 1): rank 0 computes 4, rank 1 three
    args = ["--eps", "0.05", "--steps", "5", "--samples", "61", "--device", "cpu", "--seed", "3", "--chunk", "10"]
    one = _copy_run(run_dir, tmp_path / "one")
    two = _copy_run(run_dir, tmp_path / "two")
    assert cli.main(["evaluate", "--run", str(one), *args]) == 0
    _torchrun(["evaluate", "--run", str(two), *args])
    ra, rb = read_records(one / "records" / "evaluate.csv"), read_records(two / "records" / "evaluate.csv")
    assert len(ra["index"]) == 61 and (np.diff(ra["index"]) > 0).all()
    _assert_records_equal(ra, rb)
    ja = json.loads((one / "results.json").read_text())["evaluate"]
    jb = json.loads((two / "results.json").read_text())["evaluate"]
    assert ja["eps"] == jb["eps"]  # the partitions per radius


def test_sharded_abstain_equals_one_process(run_dir, tmp_path):
    """``abstain abstain`` shares its chunks out like evaluate (one ChunkedJob): the records and
    the metrics of two ranks are those of one process."""
    one = _copy_run(run_dir, tmp_path / "one")
    two = _copy_run(run_dir, tmp_path / "two")

    def args(run: Path) -> list[str]:
        return ["abstain", "--robust", str(run), "--core", str(run), "--selector", "sr", "--eps", "0.05",
                "--steps", "3", "--samples", "41", "--batch-size", "8", "--device", "cpu", "--seed", "2"]

    assert cli.main(args(one)) == 0
    _torchrun(args(two))
    name = Path("records") / "abstain-sr-eps0.05.csv"
    _assert_records_equal(read_records(one / name), read_records(two / name))
    ja = json.loads((one / "results.json").read_text())["abstain-sr"]
    jb = json.loads((two / "results.json").read_text())["abstain-sr"]
    assert ja["0.05"] == jb["0.05"]


def test_sharded_certify_equals_one_process(run_dir, tmp_path):
    args = ["--sigma", "0.25", "--eps", "0.1", "--n0", "16", "--n", "120", "--samples", "31",
            "--noise-batch-size", "60", "--device", "cpu", "--seed", "5"]
    one = _copy_run(run_dir, tmp_path / "one")
    two = _copy_run(run_dir, tmp_path / "two")
    assert cli.main(["certify", "--run", str(one), *args]) == 0
    _torchrun(["certify", "--run", str(two), *args])
    ra, rb = read_records(one / "records" / "certify.csv"), read_records(two / "records" / "certify.csv")
    assert len(ra["index"]) == 31
    _assert_records_equal(ra, rb, ignore=("seconds",))
    ja = json.loads((one / "results.json").read_text())["certify"]
    jb = json.loads((two / "results.json").read_text())["certify"]
    assert ja["metrics"] == jb["metrics"] and jb["world_size"] == 2


def test_sharded_sequential_certify_equals_one_process(run_dir, tmp_path):
    args = ["--sigma", "0.25", "--eps", "0.1", "--n0", "16", "--n", "400", "--samples", "15",
            "--noise-batch-size", "100", "--device", "cpu", "--seed", "1", "--sequential"]
    one = _copy_run(run_dir, tmp_path / "one")
    two = _copy_run(run_dir, tmp_path / "two")
    assert cli.main(["certify", "--run", str(one), *args]) == 0
    _torchrun(["certify", "--run", str(two), *args])
    ra, rb = read_records(one / "records" / "certify.csv"), read_records(two / "records" / "certify.csv")
    _assert_records_equal(ra, rb, ignore=("seconds",))

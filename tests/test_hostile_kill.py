"""SIGKILL at seeded random moments of the paths the kill test (``test_kill_resume``) does not
take (issue 25, item 7): ``certify --sequential``, ``evaluate`` with the default (strong)
attack, and ``train --init`` (a fine-tune from a run). Each run is killed once a seeded
number of its chunks (train: epochs' checkpoints) exist, plus a seeded delay; the same
command (``--resume`` for train) then finishes, and its records are byte-identical to an
uninterrupted run's (certify: but the wall-clock ``seconds`` column) and the fine-tune's
weights bitwise equal. After every kill each file under the run is whole.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from abstain.outputs import WORK

from reliability_helpers import check_tree_consistent, cli_env, gauss3_config, one_thread, train_tiny_run  # noqa: F401

RNG = random.Random(int(os.environ.get("ABSTAIN_KILL_SEED", "2525")))
KILLS = 2
COMMANDS = {
    "certify-sequential": ["certify", "--sigma", "0.25", "--eps", "0.1", "--n0", "32", "--n", "2000", "--samples", "30",
                           "--batch-size", "500", "--chunk", "3", "--sequential", "--device", "cpu"],
    "evaluate-strong": ["evaluate", "--eps", "0.3", "--steps", "20", "--samples", "120", "--chunk", "10",
                        "--device", "cpu"],
}


def _start(args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "abstain", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=cli_env())


def _chunks(run: Path) -> int:
    return len(list((run / WORK).rglob("chunk-*.npz")))


def _kill_when(p: subprocess.Popen, ready, delay: float) -> bool:
    """SIGKILL ``p`` ``delay`` s after ``ready()`` holds; False when it finished first."""
    deadline = time.time() + 300
    while not ready() and p.poll() is None:
        assert time.time() < deadline
        time.sleep(0.005)
    time.sleep(delay)
    if p.poll() is not None:
        return False
    p.kill()
    p.wait()
    return True


def _without(path: Path, column: str) -> list[list[str]]:
    rows = [ln.split(",") for ln in path.read_text().splitlines()]
    j = rows[0].index(column) if column in rows[0] else None
    return [[c for k, c in enumerate(r) if k != j] for r in rows]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("kill")) / "run"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_job_killed_at_seeded_moments_resumes_to_the_same_records(trained, tmp_path, name):
    args = COMMANDS[name]
    rec = f"records/{args[0]}.csv"
    ref = tmp_path / "ref"
    shutil.copytree(trained, ref)
    r = subprocess.run([sys.executable, "-m", "abstain", *args, "--run", str(ref)], capture_output=True, text=True,
                       env=cli_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    landed = 0
    for trial in range(6 * KILLS):
        if landed >= KILLS:
            break
        want = _chunks(run) + RNG.randint(0, 2)
        p = _start([*args, "--run", run])
        if _kill_when(p, lambda: _chunks(run) >= want, RNG.uniform(0.0, 0.3)):
            landed += 1
        check_tree_consistent(run)
        if (run / rec).exists():
            break         # it finished before the kill: the comparison below still holds
    assert landed >= 1, "no kill landed inside the job"
    print(f"[kill-probe] {name}: {landed} SIGKILLs landed")
    r = subprocess.run([sys.executable, "-m", "abstain", *args, "--run", str(run)], capture_output=True, text=True,
                       env=cli_env(), timeout=300)
    assert r.returncode == 0 or "exist" in r.stderr, r.stderr[-2000:]
    assert _without(run / rec, "seconds") == _without(ref / rec, "seconds")


def test_a_fine_tune_killed_at_seeded_moments_resumes_to_the_same_weights(trained, tmp_path):
    (tmp_path / "ft.toml").write_text(gauss3_config(epochs=4, batch_size=16))
    base = ["train", "--config", tmp_path / "ft.toml", "--init", trained, "--device", "cpu"]
    ref = tmp_path / "ref"
    r = subprocess.run([sys.executable, "-m", "abstain", *map(str, base), "--out", str(ref)], capture_output=True,
                       text=True, env=cli_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "out"
    landed = 0
    for trial in range(6 * KILLS):
        if landed >= KILLS:
            break
        resume = (out / "config.toml").exists()
        args = [*base, "--out", out] + (["--resume"] if resume else ["--overwrite"] if out.exists() else [])
        p = _start(args)
        if _kill_when(p, lambda: (out / "train_state.pt").exists() or p.poll() is not None, RNG.uniform(0.0, 1.5)):
            landed += 1
        if out.exists():
            check_tree_consistent(out)
    assert landed >= 1, "no kill landed inside the training"
    print(f"[kill-probe] train --init: {landed} SIGKILLs landed")
    args = [*base, "--out", out] + (["--resume"] if (out / "config.toml").exists() else ["--overwrite"])
    r = subprocess.run([sys.executable, "-m", "abstain", *map(str, args)], capture_output=True, text=True,
                       env=cli_env(), timeout=300)
    assert r.returncode == 0 or "finished" in r.stderr.lower(), r.stderr[-2000:]
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()

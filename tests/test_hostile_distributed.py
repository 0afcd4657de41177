"""A rank killed or hung in the middle of ``abstain evaluate`` (issue 25, item 7): the other
rank fails with one line (exit 2) within a bounded time, never a traceback or a wait at a
barrier. Two gloo ranks on CPU, on gauss3, with a model whose forward on rank 1 dies
(SIGKILL) or hangs at its 50th call (in the attacks of the first chunks).

Found: a dead peer gave the survivor gloo's traceback ("Connection reset by peer", exit 1);
a hung peer kept it at the records' gather for torch's default 30 minutes. Fixed in
``abstain.distributed``: every collective turns a backend error into one line naming the
collective, and the process group's timeout is ``$ABSTAIN_DIST_TIMEOUT`` seconds.

* launched without torchrun's agent (as a scheduler's ``srun`` does: ``RANK``, ``WORLD_SIZE``,
  ``MASTER_ADDR``, ``MASTER_PORT`` per process), where nothing else stops the survivor;
* under ``torch.distributed.run``, a hung rank: the other fails after the timeout and the
  agent then stops the hung one.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from abstain.distributed import TIMEOUT_ENV, timeout_seconds
from abstain.errors import ConfigError

from reliability_helpers import free_port, check_tree_consistent, cli_env

DYING = '''
import os, signal, time
import torch
from torch import nn


class Dying(nn.Module):
    """Linear on gauss3; on rank 1 its DIE_AT-th forward SIGKILLs the process or hangs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(2, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if os.environ.get("RANK") == "1" and self.calls == int(os.environ["DIE_AT"]):
            if os.environ["DIE_HOW"] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)
        return self.lin(x.flatten(1))


def make():
    return Dying()
'''
ARGS = ["evaluate", "--model", "dying:make", "--random-init", "--data", "gauss3", "--eps", "0.05", "--steps", "5",
        "--samples", "200", "--chunk", "20", "--attack", "ensemble", "--device", "cpu"]




def _env(tmp_path: Path, how: str, timeout_s: float, **extra: str) -> dict[str, str]:
    (tmp_path / "dying.py").write_text(DYING)
    env = cli_env({"DIE_HOW": how, "DIE_AT": "50", TIMEOUT_ENV: str(timeout_s), **extra})
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    return env


def _assert_one_line_rank_error(text: str) -> str:
    assert "Traceback" not in text, text[-3000:]
    errors = [ln for ln in text.splitlines() if "error:" in ln]
    assert len(errors) == 1, text[-3000:]
    assert "another rank failed, died or did not answer" in errors[0] and TIMEOUT_ENV in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("how,timeout_s", [("kill", 600.0), ("hang", 3.0)])
def test_the_survivor_of_a_dead_or_hung_rank_fails_with_one_line(tmp_path, how, timeout_s):
    port = str(free_port())
    out = tmp_path / "out"
    procs = []
    t0 = time.perf_counter()
    for r in (0, 1):
        env = _env(tmp_path, how, timeout_s, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, "-m", "abstain", *ARGS, "--out", str(out)], env=env,
                                      cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        text, _ = procs[0].communicate(timeout=60)
        elapsed = time.perf_counter() - t0
    finally:
        procs[1].kill()       # the hung rank (the dead one is gone already)
        procs[1].communicate()
    assert procs[0].returncode == 2, text[-3000:]
    msg = _assert_one_line_rank_error(text)
    # a dead peer is seen when the survivor next talks to it (far before the timeout); a hung
    # one after the timeout, plus the start of two interpreters on a shared machine
    assert elapsed < (30 if how == "kill" else timeout_s + 30), elapsed
    if how == "hang":
        assert "Timed out" in msg, msg
    assert not (out / "records").exists()           # no records from half the ranks
    check_tree_consistent(out)                      # and no half-written file


def test_under_torchrun_a_hung_rank_ends_the_run_in_bounded_time(tmp_path):
    env = _env(tmp_path, "hang", 3.0)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "abstain",
           "--", *ARGS, "--out", str(tmp_path / "out")]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t0
    assert r.returncode != 0
    ours = "\n".join(ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("abstain evaluate"))
    assert "error: rank 0/2: another rank failed, died or did not answer within 3 s" in ours, r.stderr[-3000:]
    assert elapsed < 40, elapsed
    assert not (tmp_path / "out" / "records").exists()


@pytest.mark.parametrize("raw", ["0", "-5", "nan", "inf", "soon"])
def test_a_timeout_that_makes_no_sense_is_refused(monkeypatch, raw):
    monkeypatch.setenv(TIMEOUT_ENV, raw)
    with pytest.raises(ConfigError, match=TIMEOUT_ENV):
        timeout_seconds()


def test_the_timeout_defaults_to_torchs_and_reads_the_environment(monkeypatch):
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert timeout_seconds() == 1800.0
    monkeypatch.setenv(TIMEOUT_ENV, "12.5")
    assert timeout_seconds() == 12.5


def test_the_timeout_reaches_the_process_group(monkeypatch):
    from datetime import timedelta

    import torch

    from abstain import distributed

    seen: dict = {}
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(TIMEOUT_ENV, "7")
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend, **kw: seen.update(kw, backend=backend))
    assert distributed.init_from_env(torch.device("cpu"))
    assert seen == {"backend": "gloo", "timeout": timedelta(seconds=7)}

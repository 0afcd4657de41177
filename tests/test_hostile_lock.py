"""The output lock (issue 25, item 5): opened with O_NOFOLLOW in a directory checked first, a
regular file only, recording the holder's PID and start time; a lock file left by a SIGKILL
is taken over; ``abstain reproduce`` takes the same lock as every other command."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from abstain.errors import ConfigError
from abstain.outputs import LOCK, DirLock, _process_start

from reliability_helpers import assert_clean_refusal, one_thread, run_main, train_tiny_run  # noqa: F401

EVAL = ["--eps", "0.05", "--steps", "2", "--samples", "10", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("lock"))


@pytest.fixture
def run(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained / "run", tmp_path / "run"))


def test_a_symlinked_lock_is_refused_and_its_target_never_created(run, tmp_path, capsys):
    target = tmp_path / "outside" / "created-by-the-lock"
    target.parent.mkdir()
    (run / LOCK).symlink_to(target)
    rc, _, err = run_main(["evaluate", "--run", run, *EVAL], capsys)
    assert rc == 2 and "symbolic link" in assert_clean_refusal(rc, err)
    assert not target.exists() and not (run / "records").exists()


def test_a_lock_that_is_a_fifo_is_refused_without_blocking(run, capsys):
    os.mkfifo(run / LOCK)
    rc, _, err = run_main(["evaluate", "--run", run, *EVAL], capsys)
    assert rc == 2 and "not a regular file" in assert_clean_refusal(rc, err)


def test_the_holder_is_named_while_it_lives(tmp_path):
    held = DirLock(tmp_path / LOCK, "x").acquire()
    try:
        pid, start = (tmp_path / LOCK).read_text().split()
        assert int(pid) == os.getpid() and start == _process_start(os.getpid()) and start
        with pytest.raises(ConfigError, match=f"PID {os.getpid()}"):
            DirLock(tmp_path / LOCK, "x").acquire()
    finally:
        held.release()
    assert not (tmp_path / LOCK).exists()


def test_a_lock_left_by_a_sigkill_is_taken_over(run, capsys):
    """A child takes the lock and is SIGKILLed: the file stays, the flock does not."""
    code = ("import sys, time; from pathlib import Path; from abstain.outputs import DirLock; "
            f"DirLock(Path({str(run / LOCK)!r}), 'x').acquire(); print('held', flush=True); time.sleep(600)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    try:
        assert child.stdout.readline().strip() == "held"
        rc, _, err = run_main(["evaluate", "--run", run, *EVAL], capsys)
        assert rc == 2 and f"PID {child.pid}" in assert_clean_refusal(rc, err, "another abstain command")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert (run / LOCK).read_text().split()[0] == str(child.pid)      # the stale file is left
    rc, _, err = run_main(["evaluate", "--run", run, *EVAL], capsys)
    assert rc == 0, err
    assert not (run / LOCK).exists()


def test_a_lock_directory_that_is_not_a_directory_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        DirLock(tmp_path / "file" / LOCK, "x").acquire()


def test_reproduce_takes_the_lock_of_every_command(tmp_path):
    from abstain.pipeline import _lock

    held = DirLock(tmp_path / LOCK, str(tmp_path)).acquire()
    try:
        with pytest.raises(ConfigError, match="another abstain command"):
            with _lock(tmp_path):
                pass
    finally:
        held.release()
    with _lock(tmp_path):
        with pytest.raises(ConfigError, match="another abstain command"):
            DirLock(tmp_path / LOCK, "x").acquire()
    assert not (tmp_path / LOCK).exists()

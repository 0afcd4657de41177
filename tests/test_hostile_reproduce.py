"""Probes of ``abstain reproduce --jobs 2`` interrupted (issue 25, item 7), on the fake stages of
``pipeline_fakes`` (a -> b -> d, c independent; 4 "epochs" of 0.4 s each, one checkpoint per
epoch under ``work/``).

The command is interrupted while stage b runs in a worker process, by a SIGKILL of the
pipeline process, or by a SIGINT to its whole process group (what Ctrl-C in a terminal does),
then run again with ``--jobs 2``. The rerun finishes (no stale lock blocks it), finished stages
are not recomputed, b resumes from its checkpoints, and every record equals that of an
uninterrupted one-job run. After a SIGKILL no worker outlives the pipeline process by more
than its parent watch (found: the workers went on and finished b, ``.done`` included, after
the lock was released, racing the rerun; fixed by ``pipeline._exit_with_parent``). A Ctrl-C
prints no traceback (found: the idle worker's KeyboardInterrupt printed one from inside
``concurrent.futures``; workers now ignore SIGINT and the pipeline process stops them). Left:
Python's resource tracker may still warn about leaked semaphores of the stopped pool.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import abstain.stages as stages_pkg
import pipeline_fakes
from abstain.outputs import LOCK
from abstain.pipeline import DONE, run_pipeline

from reliability_helpers import cli_env

HERE = Path(__file__).resolve().parent


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc)."""
    kids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(d.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start(out: Path, log: Path, sleep: float) -> subprocess.Popen:
    env = cli_env({"FAKE_LOG": str(log), "FAKE_SLEEP": str(sleep),
                   "PYTHONPATH": os.pathsep.join([str(HERE), cli_env()["PYTHONPATH"]])})
    for k in ("FAKE_PARAMS", "FAKE_STOP", "FAKE_FAIL"):
        env.pop(k, None)
    return subprocess.Popen([sys.executable, str(HERE / "pipeline_fakes.py"), "reproduce", "--demo", "--out",
                             str(out), "--quiet", "--jobs", "2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _records(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): p.read_text() for p in sorted(out.glob("*/records/*.csv"))}


@pytest.fixture
def reference(monkeypatch, tmp_path) -> Path:
    """The uninterrupted one-job run of the fake stages."""
    monkeypatch.setattr(stages_pkg, "STAGES", list(stages_pkg.STAGES))
    pipeline_fakes.install(stages_pkg)
    for k in ("FAKE_SLEEP", "FAKE_PARAMS", "FAKE_STOP", "FAKE_FAIL", "FAKE_LOG"):
        monkeypatch.delenv(k, raising=False)
    ref = tmp_path / "ref"
    run_pipeline(ref, demo=True, quiet=True, log=lambda m: None)
    return ref


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT-group"])
def test_reproduce_jobs2_interrupted_then_rerun(reference, tmp_path, how):
    out, log = tmp_path / "out", tmp_path / "calls.log"
    proc = _start(out, log, sleep=0.4)
    deadline = time.time() + 120
    # a and c finished, b training (c is independent of a and b: under load it can still be
    # running when b starts, and would then rightly be run again after the interruption)
    while not ((out / "b" / "work" / "epoch0.txt").exists() and (out / "c" / DONE).exists()):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "stage b never started"
        time.sleep(0.01)
    workers = _children(proc.pid)
    if how == "SIGKILL":
        proc.send_signal(signal.SIGKILL)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if how == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130, err
        assert "Traceback" not in err and "run the same command again to continue" in err
    t_stop = time.time()
    while any(_alive(w) for w in workers):                        # the workers follow their parent
        assert time.time() - t_stop < 10, f"workers outlived the pipeline: {[w for w in workers if _alive(w)]}"
        time.sleep(0.05)
    first = log.read_text().splitlines()
    assert not (out / "b" / DONE).exists(), "b was finished after its pipeline was stopped"
    assert "epoch b 3" not in first and "run d" not in first
    time.sleep(0.5)      # more than the watch's poll: nothing more is written
    assert log.read_text().splitlines() == first
    proc = _start(out, log, sleep=0.0)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err                               # no stale lock blocks the rerun
    lines = log.read_text().splitlines()
    assert lines.count("run a") == 1 and lines.count("run c") == 1  # finished stages are not recomputed
    assert lines.count("epoch b 0") == 1                            # b resumed from its checkpoint
    assert lines.count("epoch b 3") == 1 and lines.count("run d") == 1
    assert "a: cached" in stdout and "c: cached" in stdout
    assert _records(out) == _records(reference)
    for n in "abcd":
        assert (out / n / DONE).read_text() == (reference / n / DONE).read_text()
    assert not (out / LOCK).exists()


def test_a_fifo_or_huge_stage_marker_reads_as_not_done_without_blocking(tmp_path):
    """``.done`` / ``.started`` are read only as small regular files: a FIFO there blocked
    ``abstain reproduce`` forever (found by the report probes, issue 25)."""
    import os
    import threading

    from abstain.pipeline import DONE, is_done

    stage = tmp_path / "s"
    stage.mkdir()
    (stage / "results.json").write_text("{}")
    os.mkfifo(stage / DONE)
    answer: list[bool] = []
    t = threading.Thread(target=lambda: answer.append(is_done(stage, "h")), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive() and answer == [False]
    (stage / DONE).unlink()
    (stage / DONE).write_text("h" * 10_000)        # not a hash
    assert not is_done(stage, "h")
    (stage / DONE).write_text("h")
    assert is_done(stage, "h")

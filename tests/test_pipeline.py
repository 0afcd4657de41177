"""abstain reproduce's pipeline: caching, invalidation, resume after SIGINT/SIGKILL, errors.

Uses the fake stages of ``pipeline_fakes`` (a -> b -> d, c independent), registered in
``abstain.stages.STAGES``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import abstain.stages as stages_pkg
import pipeline_fakes
from abstain.cli import main as cli_main
from abstain.pipeline import DONE, STARTED, plan, run_pipeline

HERE = Path(__file__).resolve().parent


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    """Fake stages registered; FAKE_LOG set; returns a function reading the log lines."""
    monkeypatch.setattr(stages_pkg, "STAGES", list(stages_pkg.STAGES))
    pipeline_fakes.install(stages_pkg)
    log = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    for k in ("FAKE_SLEEP", "FAKE_PARAMS", "FAKE_STOP", "FAKE_FAIL"):
        monkeypatch.delenv(k, raising=False)

    def lines() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []
    return lines


def _records(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): p.read_text() for p in sorted(out.glob("*/records/*.csv"))}


def _run(out: Path, **kw):
    return run_pipeline(out, demo=True, quiet=True, log=lambda m: None, **kw)


def test_rerun_skips_finished_stages(fakes, tmp_path):
    out = tmp_path / "out"
    r1 = _run(out)
    assert r1.status == {"a": "done", "b": "done", "c": "done", "d": "done"}
    assert sorted(l for l in fakes() if l.startswith("run")) == ["run a", "run b", "run c", "run d"]
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "pipeline.json"}
    recs = _records(out)
    n_lines = len(fakes())
    r2 = _run(out)
    assert r2.status == {n: "cached" for n in "abcd"}
    assert len(fakes()) == n_lines                       # nothing ran again
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert _records(out) == recs
    for n in "abcd":
        res = json.loads((out / n / "results.json").read_text())
        assert (out / n / DONE).read_text().strip() == res["meta"]["hash"]
        assert not (out / n / STARTED).exists()
        meta = res["meta"]
        assert meta["seeds"] == [0] and meta["eps"] == 0.1 and meta["norm"] == "linf"
        assert set(meta["versions"]) >= {"python", "torch", "numpy", "abstain"}
        assert meta["seconds"] >= 0 and "cpu" in meta["device"]


def test_config_change_reruns_only_that_stage_and_its_dependents(fakes, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _run(out)
    before = _records(out)
    hashes = {n: (out / n / DONE).read_text() for n in "abcd"}
    (out / "b" / "work" / "stale-marker").write_text("x")
    n0 = len(fakes())
    monkeypatch.setenv("FAKE_PARAMS", json.dumps({"b": 7}))
    r = _run(out)
    assert r.status == {"a": "cached", "b": "done", "c": "cached", "d": "done"}
    new = fakes()[n0:]
    assert [l for l in new if l.startswith("run")] == ["run b", "run d"]
    # the stale checkpoints of b were cleared: all epochs trained again
    assert [l for l in new if l.startswith("epoch b")] == [f"epoch b {k}" for k in range(4)]
    assert not (out / "b" / "work" / "stale-marker").exists()
    after = _records(out)
    for n in "ac":
        assert (out / n / DONE).read_text() == hashes[n]
        assert all(after[k] == before[k] for k in before if k.startswith(n + "/"))
    for n in "bd":
        assert (out / n / DONE).read_text() != hashes[n]
    assert any(after[k] != before[k] for k in before if k.startswith("d/"))   # d saw b's new records


def test_interrupted_stage_resumes_from_its_checkpoints_only_for_the_same_config(fakes, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("FAKE_STOP", "b:2")
    with pytest.raises(KeyboardInterrupt):
        _run(out)
    assert not (out / "b" / DONE).exists() and (out / "b" / STARTED).exists()
    assert json.loads((out / "pipeline.json").read_text())["stages"]["b"]["status"] == "interrupted"
    monkeypatch.delenv("FAKE_STOP")
    n0 = len(fakes())
    r = _run(out)
    assert r.status == {"a": "cached", "b": "done", "c": "done", "d": "done"}
    assert [l for l in fakes()[n0:] if l.startswith("epoch b")] == ["epoch b 2", "epoch b 3"]
    ref = tmp_path / "ref"
    _run(ref)
    assert _records(out) == _records(ref)
    # interrupted again, then the config changes: the old checkpoints must not be reused
    out2 = tmp_path / "out2"
    monkeypatch.setenv("FAKE_STOP", "b:2")
    with pytest.raises(KeyboardInterrupt):
        _run(out2)
    monkeypatch.delenv("FAKE_STOP")
    monkeypatch.setenv("FAKE_PARAMS", json.dumps({"b": 3}))
    n1 = len(fakes())
    _run(out2)
    assert [l for l in fakes()[n1:] if l.startswith("epoch b")] == [f"epoch b {k}" for k in range(4)]


def test_force_and_only(fakes, tmp_path):
    out = tmp_path / "out"
    r = _run(out, only=["d"])
    assert r.status == {"a": "done", "b": "done", "d": "done"}     # d plus what it needs
    assert not (out / "c").exists()
    n0 = len(fakes())
    r = _run(out, only=["b"], force=True)
    assert r.status == {"a": "cached", "b": "done"}
    assert [l for l in fakes()[n0:] if l.startswith("run")] == ["run b"]
    assert [l for l in fakes()[n0:] if l.startswith("epoch")] == [f"epoch b {k}" for k in range(4)]


def test_unknown_stage_is_a_clear_error(fakes, tmp_path, capsys):
    rc = cli_main(["reproduce", "--only", "b", "nope", "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "unknown stage 'nope'" in err and "known stages: a, b, c, d" in err
    assert not (tmp_path / "o").exists()
    rc = cli_main(["reproduce", "--only", "cifar10-table5", "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 2 and "'cifar10-table5' is a paper-scale stage (use --scale paper)" in capsys.readouterr().err


def test_failing_stages_are_reported_and_the_rest_runs(fakes, tmp_path, monkeypatch, capsys):
    def broken_config(scale, demo):
        raise ValueError("bad config of x")

    x = pipeline_fakes.FakeStage("x")
    y = pipeline_fakes.FakeStage("y", ("x",))
    pipeline_fakes.install(stages_pkg, pipeline_fakes.FAKES + (x, y))
    import dataclasses
    stages_pkg.STAGES[4] = dataclasses.replace(stages_pkg.STAGES[4], config=broken_config)
    monkeypatch.setenv("FAKE_FAIL", "b")
    out = tmp_path / "out"
    rc = cli_main(["reproduce", "--demo", "--out", str(out), "--quiet"])
    cap = capsys.readouterr()
    assert rc == 1
    assert "fake failure in b" in cap.err
    ps = {p.name: p for p in plan("mini", True)}
    assert "bad config of x" in ps["x"].error and "x" in ps["y"].error
    status = json.loads((out / "pipeline.json").read_text())["stages"]
    assert status["a"]["status"] == "done" and status["c"]["status"] == "done"
    assert status["b"]["status"] == "failed" and status["d"]["status"] == "skipped"
    assert status["x"]["status"] == "failed" and "bad config of x" in status["x"]["error"]
    assert status["y"]["status"] == "failed"
    md = (out / "report.md").read_text()
    for name, word in (("b", "failed"), ("d", "skipped"), ("x", "failed"), ("y", "failed")):
        assert f"`{name}` ({word})" in md


def test_quiet_sets_env(fakes, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ABSTAIN_QUIET", raising=False)
    rc = cli_main(["reproduce", "--demo", "--only", "a", "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 0 and os.environ.get("ABSTAIN_QUIET") == "1"
    out = capsys.readouterr().out
    assert "[1/1] a: done in" in out and "nat 0." in out     # one summary line per stage


def test_paper_scale_without_data_names_every_missing_path(tmp_path, capsys, monkeypatch):
    import abstain.stages.paper as paper

    configs = tmp_path / "configs"
    configs.mkdir()
    head = '[data]\nname = "cifar10"\n[model]\narch = "resnet50"\n'
    tail = '[train]\nloss = "era"\nschedule = "finetune"\n[loss]\neps = 0.00392156862745098\n'
    (configs / "cifar10-table4-era-carmon-eps1.toml").write_text(
        head + 'init = "models/Carmon2019Unlabeled.pt"\n' + tail)
    (configs / "pre.toml").write_text('[experiment]\nrole = "pretrain"\noutput = "models/pre"\n' + head)
    (configs / "cifar10-table5-era-eps1.toml").write_text(head + 'init = "models/pre"\n' + tail)
    monkeypatch.setenv("ABSTAIN_CONFIGS", str(configs))
    root = tmp_path / "data"
    (root / "cifar-10-batches-py").mkdir(parents=True)
    for f in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "test_batch"):
        (root / "cifar-10-batches-py" / f).write_text("x")        # data_batch_5 is missing
    t0 = time.perf_counter()
    rc = cli_main(["reproduce", "--scale", "paper", "--out", str(tmp_path / "o"),
                   "--data-root", str(root), "--quiet"])
    assert time.perf_counter() - t0 < 30
    err = capsys.readouterr().err
    assert rc == 2 and "--scale paper needs data that is not there" in err
    listed = [l[4:] for l in err.splitlines() if l.startswith("  - ")]
    cifar = [l for l in listed if "cifar-10-batches-py" in l]
    assert cifar == [f"{root / 'cifar-10-batches-py' / 'data_batch_5'}: CIFAR-10, python version: download "
                     "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it into the data root"]
    assert any(l.startswith(f"{root / 'mtsd'}: ") and "mapillary.com/dataset/trafficsign" in l
               and "abstain data mtsd" in l for l in listed)
    assert any(l.startswith(f"{root / 'models' / 'Carmon2019Unlabeled.pt'}: ") and "RobustBench" in l
               and "dataset='cifar10'" in l for l in listed)
    assert any(l.startswith(f"{root / 'models' / 'pre'}: ") and
               "abstain train --config configs/pre.toml --out <data-root>/models/pre" in l for l in listed)
    # every required path that is absent is named (a whole missing directory once)
    for path, what in paper.required_paths(root):
        if not path.exists():
            assert any(l.startswith(f"{path}: ") or l.startswith(f"{path.parent}: ") for l in listed), path
    assert not (tmp_path / "o").exists()
    # with no data root at all: nothing is looked up in the current directory, every dataset named
    rc = cli_main(["reproduce", "--scale", "paper", "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "no --data-root given" in err and "<data-root>/cifar-10-batches-py:" in err


# ---------------------------------------------------------------- killed in a subprocess


def _start(out: Path, log: Path, sleep: float) -> subprocess.Popen:
    env = {**os.environ, "FAKE_LOG": str(log), "FAKE_SLEEP": str(sleep), "ABSTAIN_QUIET": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    for k in ("FAKE_PARAMS", "FAKE_STOP", "FAKE_FAIL"):
        env.pop(k, None)
    return subprocess.Popen([sys.executable, str(HERE / "pipeline_fakes.py"), "reproduce", "--demo",
                             "--out", str(out), "--quiet"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_killed_run_continues_to_the_same_results(fakes, tmp_path, sig):
    ref = tmp_path / "ref"
    _run(ref)
    out, log = tmp_path / "out", tmp_path / "sub.log"
    proc = _start(out, log, sleep=0.4)
    deadline = time.time() + 60
    while not (out / "b" / "work" / "epoch0.txt").exists():       # a finished, b in training
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert "interrupted" in err and "run the same command again to continue" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert (out / "a" / DONE).exists() and not (out / "b" / DONE).exists()
    first = log.read_text().splitlines()
    assert "run a" in first and "epoch b 0" in first and "run c" not in first
    proc = _start(out, log, sleep=0.0)
    stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "[1/4] a: cached" in stdout and "[2/4] b: done in" in stdout
    lines = log.read_text().splitlines()
    assert lines.count("run a") == 1                           # finished stage not recomputed
    assert lines.count("epoch b 0") == 1                       # b's checkpoint reused
    assert lines.count("epoch b 3") == 1 and lines.count("run d") == 1
    assert _records(out) == _records(ref)
    for n in "abcd":
        assert (out / n / DONE).read_text() == (ref / n / DONE).read_text()
    assert (out / "report.html").is_file() and (out / "report.md").is_file()


def test_parallel_jobs_give_the_records_of_one_job(fakes, tmp_path, monkeypatch):
    """--jobs 2: independent stages run in worker processes, dependents wait for their
    dependencies, records equal those of one job; a failure skips its dependents only."""
    r1 = _run(tmp_path / "one")
    r2 = _run(tmp_path / "two", jobs=2)
    assert r1.status == r2.status == {n: "done" for n in "abcd"}
    assert _records(tmp_path / "one") == _records(tmp_path / "two")
    second = [l for l in fakes() if l.startswith("run")][4:]          # the order of the --jobs 2 run
    assert sorted(second) == ["run a", "run b", "run c", "run d"]
    assert second.index("run b") > second.index("run a") and second.index("run d") > second.index("run b")
    assert _run(tmp_path / "two", jobs=2).status == {n: "cached" for n in "abcd"}
    monkeypatch.setenv("FAKE_FAIL", "b")
    r3 = _run(tmp_path / "three", jobs=2)
    assert r3.status == {"a": "done", "b": "failed", "c": "done", "d": "skipped"}
    assert "fake failure in b" in r3.errors["b"]

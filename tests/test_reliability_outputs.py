"""Nothing is destroyed without --overwrite, and --overwrite removes only our own files
(issue 16, item 1); one writer per output directory.

Each case below was a defect found by probing the CLI: a file replaced without --overwrite,
a directory of someone else's files emptied by --overwrite, two writers mixing their files.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from abstain.outputs import LOCK, DirLock, read_manifest

from reliability_helpers import (  # noqa: F401
    assert_clean_refusal, cli_env, gauss3_config, one_thread, run_main, train_tiny_run, tree_snapshot)

EVAL = ["--eps", "0.05", "--steps", "2", "--samples", "30", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("outputs")
    return train_tiny_run(d)


@pytest.fixture
def run(trained, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained / "run", dst)
    return dst


def test_train_records_its_files_and_leaves_no_lock(run):
    listed = read_manifest(run)
    assert {"model.safetensors", "meta.json", "train_state.pt", "config.toml", "log.jsonl",
            "results.json"} <= set(listed) and set(listed.values()) == {"train"}
    assert not (run / LOCK).exists()


def test_save_adversarial_never_replaces_the_run_weights(run, capsys):
    weights = (run / "model.safetensors").read_bytes()
    target = run / "model.safetensors"
    for extra in ([], ["--overwrite"]):
        rc, _, err = run_main(["evaluate", "--run", run, *EVAL, "--save-adversarial", target, *extra], capsys)
        msg = assert_clean_refusal(rc, err, str(target))
        assert rc == 2 and ("exists" in msg if not extra else "abstain train" in msg)
    assert (run / "model.safetensors").read_bytes() == weights
    assert not (run / "records" / "evaluate.csv").exists()


def test_save_adversarial_refuses_foreign_files_and_replaces_its_own(run, tmp_path, capsys):
    foreign = tmp_path / "mine.safetensors"
    foreign.write_bytes(b"the user's own file")
    rc, _, err = run_main(["evaluate", "--run", run, *EVAL, "--save-adversarial", foreign, "--overwrite"], capsys)
    assert rc == 2 and "something other than abstain" in assert_clean_refusal(rc, err)
    assert foreign.read_bytes() == b"the user's own file"
    adv = tmp_path / "adv.safetensors"
    assert run_main(["evaluate", "--run", run, *EVAL, "--save-adversarial", adv], capsys)[0] == 0
    rc, _, err = run_main(["evaluate", "--run", run, *EVAL, "--save-adversarial", adv], capsys)
    assert rc == 2 and "exists" in assert_clean_refusal(rc, err)
    rc, _, err = run_main(["evaluate", "--run", run, *EVAL, "--save-adversarial", adv, "--overwrite"], capsys)
    assert rc == 0, err


def test_train_overwrite_refuses_a_directory_of_other_files(trained, tmp_path, capsys):
    src = tmp_path / "data"
    (src / "records").mkdir(parents=True)
    (src / "records" / "mine.csv").write_text("a,b\n1,2\n")
    (src / "config.toml").write_text("# mine\n")
    (src / "results.json").write_text("{}")
    before = tree_snapshot(src)
    rc, _, err = run_main(["train", "--config", trained / "c.toml", "--out", src, "--overwrite",
                           "--device", "cpu"], capsys)
    assert rc == 2 and "did not write" in assert_clean_refusal(rc, err)
    assert tree_snapshot(src) == before


def test_train_overwrite_keeps_a_user_file_in_a_run(run, trained, capsys):
    (run / "records").mkdir(exist_ok=True)
    (run / "records" / "notes.txt").write_text("mine")
    before = tree_snapshot(run)
    rc, _, err = run_main(["train", "--config", trained / "c.toml", "--out", run, "--overwrite",
                           "--device", "cpu"], capsys)
    assert rc == 2 and "records/notes.txt" in assert_clean_refusal(rc, err)
    assert tree_snapshot(run) == before


def test_train_overwrite_replaces_our_own_run(run, trained, capsys):
    assert run_main(["evaluate", "--run", run, *EVAL], capsys)[0] == 0
    assert (run / "records" / "evaluate.csv").exists()
    rc, _, err = run_main(["train", "--config", trained / "c.toml", "--out", run, "--overwrite",
                           "--device", "cpu", "--set", "train.seed=1"], capsys)
    assert rc == 0, err
    assert not (run / "records").exists()        # the old model's records went with it
    assert "evaluate" not in __import__("json").loads((run / "results.json").read_text())


def test_abstain_rerun_does_not_replace_earlier_results(run, capsys):
    argv = ["abstain", "--robust", run, "--core", run, "--selector", "eri", "--eps", "0.05",
            "--steps", "2", "--samples", "20", "--device", "cpu"]
    rc, _, err = run_main(argv, capsys)
    assert rc == 0, err
    before = tree_snapshot(run)
    rc, _, err = run_main([a if a != "2" else "3" for a in argv], capsys)   # same selector, other steps
    assert rc == 2 and "--overwrite" in assert_clean_refusal(rc, err)
    assert tree_snapshot(run) == before
    rc, _, err = run_main(argv + ["--overwrite"], capsys)
    assert rc == 0, err


def test_evaluate_records_are_not_replaced_and_a_truncated_results_json_is_named(run, capsys):
    assert run_main(["evaluate", "--run", run, *EVAL], capsys)[0] == 0
    before = tree_snapshot(run)
    rc, _, err = run_main(["evaluate", "--run", run, *EVAL, "--steps", "3"], capsys)
    assert rc == 2 and "exists" in assert_clean_refusal(rc, err)
    assert tree_snapshot(run) == before
    (run / "results.json").write_text('{"train": {"lo')
    rc, _, err = run_main(["evaluate", "--run", run, *EVAL, "--overwrite"], capsys)
    assert rc == 2 and "results.json" in assert_clean_refusal(rc, err, "truncated")


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_out_under_a_file_is_one_line(run, tmp_path, where, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    out = f if where == "file" else f / "sub"
    rc, _, err = run_main(["evaluate", "--run", run, *EVAL, "--out", out], capsys)
    assert rc == 2 and "is a file" in assert_clean_refusal(rc, err)
    assert f.read_text() == "x"


@pytest.mark.parametrize("command", ["train", "evaluate", "certify", "abstain"])
def test_a_second_writer_fails_at_once(run, trained, command, capsys):
    argv = {"train": ["train", "--config", trained / "c.toml", "--out", run, "--resume", "--device", "cpu"],
            "evaluate": ["evaluate", "--run", run, *EVAL],
            "certify": ["certify", "--run", run, "--sigma", "0.25", "--eps", "0.1", "--n0", "8", "--n", "64",
                        "--samples", "6", "--device", "cpu"],
            "abstain": ["abstain", "--robust", run, "--core", run, "--selector", "eri", "--eps", "0.05",
                        "--steps", "2", "--samples", "20", "--device", "cpu"]}[command]
    before = tree_snapshot(run)
    held = DirLock(run / LOCK, str(run)).acquire()
    try:
        t0 = time.perf_counter()
        rc, _, err = run_main(argv, capsys)
        assert time.perf_counter() - t0 < 5
        assert rc == 2 and "another abstain command is writing" in assert_clean_refusal(rc, err)
        assert {k: v for k, v in tree_snapshot(run).items() if k != LOCK} == before
    finally:
        held.release()
    rc, _, err = run_main(argv, capsys)                 # free again: the same command runs
    assert rc == 0, err


def test_two_real_trainings_into_one_directory(trained, tmp_path):
    """Two `train --overwrite --out R` at once: exactly one runs, the other fails at once.

    The first trains for minutes and is stopped (SIGTERM) once the second has returned: with a
    short first run, the first could end before the second had even started (seen in one of
    five suite runs), and the second then rightly overwrote a finished run."""
    out = tmp_path / "r"
    cfg = tmp_path / "slow.toml"
    cfg.write_text(gauss3_config(epochs=2000))
    argv = [sys.executable, "-m", "abstain", "train", "--config", str(cfg), "--out", str(out),
            "--overwrite", "--device", "cpu"]
    first = subprocess.Popen(argv, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "config.toml").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    second = subprocess.run(argv, env=cli_env(), capture_output=True, text=True, timeout=120)
    first_was_running = first.poll() is None
    first.send_signal(signal.SIGTERM)
    _, err1 = first.communicate(timeout=300)
    assert first_was_running, f"the first training ended before the second one: {err1[-2000:]}"
    assert first.returncode == 130 and "Traceback" not in err1, err1[-2000:]   # stopped cleanly
    assert second.returncode == 2 and "another abstain command is writing" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr


def _mtsd(tmp_path):
    from test_mtsd import _fixture

    ann, img, _ = _fixture(tmp_path)
    return ann, img


@pytest.mark.parametrize("target", ["images", "parent", "annotations", "inside"])
def test_mtsd_out_never_overlaps_its_sources(tmp_path, target, capsys):
    ann, img = _mtsd(tmp_path)
    out = {"images": img, "parent": img.parent, "annotations": ann, "inside": img / "crops"}[target]
    before = tree_snapshot(tmp_path)
    rc, _, err = run_main(["data", "mtsd", "--annotations", ann, "--images", img, "--out", out,
                           "--overwrite"], capsys)
    assert rc == 2 and "overlaps the source" in assert_clean_refusal(rc, err)
    assert tree_snapshot(tmp_path) == before


def test_mtsd_overwrite_replaces_only_its_own_output(tmp_path, capsys):
    ann, img = _mtsd(tmp_path)
    out = tmp_path / "crops"
    argv = ["data", "mtsd", "--annotations", ann, "--images", img, "--out", out, "--workers", "64"]
    assert run_main(argv, capsys)[0] == 0
    (out / "train" / "notes.txt").write_text("mine")
    rc, _, err = run_main(argv + ["--overwrite"], capsys)
    assert rc == 2 and "notes.txt" in assert_clean_refusal(rc, err)
    (out / "train" / "notes.txt").unlink()
    assert run_main(argv + ["--overwrite"], capsys)[0] == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_mtsd_refuses_a_foreign_directory_and_overwrite_keeps_its_files(tmp_path, capsys):
    """Issue 26, item 2: the command decides which files are ours (abstain.outputs), the
    converter only writes a new tree."""
    ann, img = _mtsd(tmp_path)
    out = tmp_path / "crops"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["data", "mtsd", "--annotations", ann, "--images", img, "--out", out]
    before = tree_snapshot(tmp_path)
    rc, _, err = run_main(argv, capsys)
    assert "exists" in assert_clean_refusal(rc, err)
    rc, _, err = run_main(argv + ["--overwrite"], capsys)
    assert "notes.txt" in assert_clean_refusal(rc, err)
    assert tree_snapshot(tmp_path) == before            # nothing written, the foreign file kept

    # an earlier conversion (every file recorded as ours) with a foreign file added to it
    out2 = tmp_path / "crops2"
    argv2 = ["data", "mtsd", "--annotations", ann, "--images", img, "--out", out2]
    assert run_main(argv2, capsys)[0] == 0
    assert read_manifest(out2)["summary.json"] == "data mtsd"
    assert all(read_manifest(p.parent).get(p.name) == "data mtsd"
               for p in out2.rglob("*.png"))
    (out2 / "train" / "notes.txt").write_text("mine")
    before = tree_snapshot(tmp_path)
    rc, _, err = run_main(argv2 + ["--overwrite", "--seed", "5"], capsys)
    assert "notes.txt" in assert_clean_refusal(rc, err)
    assert tree_snapshot(tmp_path) == before
    (out2 / "train" / "notes.txt").unlink()
    assert run_main(argv2 + ["--overwrite", "--seed", "5"], capsys)[0] == 0
    assert json.loads((out2 / "summary.json").read_text())["seed"] == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_replace_dir_refuses_a_file_that_appears_during_the_write(tmp_path):
    from abstain.errors import ConfigError
    from abstain.outputs import replace_dir

    out = tmp_path / "tree"

    def write(new, late=False):
        (new / "sub").mkdir(parents=True)
        (new / "sub" / "a.txt").write_text("new" if late else "ours")
        if late:
            (out / "late.txt").write_text("theirs")    # another program, while we convert
        return "done"

    assert replace_dir(out, write, "test", overwrite=False) == "done"
    with pytest.raises(ConfigError, match="late.txt"):
        replace_dir(out, lambda new: write(new, late=True), "test", overwrite=True)
    assert (out / "sub" / "a.txt").read_text() == "ours" and (out / "late.txt").read_text() == "theirs"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_replace_dir_leaves_nothing_after_a_failed_write(tmp_path):
    from abstain.outputs import replace_dir

    out = tmp_path / "tree"
    assert replace_dir(out, lambda new: (new.mkdir(), (new / "a").write_text("1")), "test", False)
    before = tree_snapshot(tmp_path)

    def fail(new):
        new.mkdir()
        (new / "a").write_text("2")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_dir(out, fail, "test", overwrite=True)
    assert tree_snapshot(tmp_path) == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_mtsd_workers_are_capped(tmp_path, monkeypatch):
    from abstain.data import mtsd

    seen = {}
    real = mtsd._run_tasks

    def spy(tasks, staging, size, workers, progress):
        seen["workers"] = workers
        return real(tasks, staging, size, 1, progress)

    monkeypatch.setattr(mtsd, "_run_tasks", spy)
    ann, img = _mtsd(tmp_path)
    mtsd.convert_mtsd(ann, img, tmp_path / "o", workers=40)
    import os

    assert seen["workers"] <= (os.cpu_count() or 1)


def test_a_model_evaluated_into_a_new_directory_can_be_replaced_by_train(trained, tmp_path, capsys):
    """evaluate --model ... --out NEW creates results.json: listed as ours, so a later
    `train --overwrite --out NEW` may replace the directory."""
    out = tmp_path / "new"
    rc, _, err = run_main(["evaluate", "--model", "abstain.models.small:mlp", "--random-init", "--data", "gauss3", "--out", out,
                           *EVAL], capsys)
    assert rc == 0, err
    assert read_manifest(out)["results.json"] == "results"
    rc, _, err = run_main(["train", "--config", trained / "c.toml", "--out", out, "--overwrite",
                           "--device", "cpu"], capsys)
    assert rc == 0, err
    assert not (out / "records").exists()

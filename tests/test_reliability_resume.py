"""Resumable evaluate/certify and SIGTERM (issue 16, item 4), in process where possible.

The kill test (tests/test_kill_resume.py) kills the real CLI; these tests pin the parts:
a rerun computes only the chunks left and gives the same records, a changed command or a
retrained model never reuses chunks, certify holds one chunk of inputs at a time, and
SIGTERM stops ``evaluate`` and ``train`` like Ctrl-C (train keeps a checkpoint).
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

from abstain.outputs import WORK

from reliability_helpers import (cli_env, gauss3_config, interrupted_after, run_main,
                               train_tiny_run)  # noqa: F401

EVAL = ["--eps", "0.05", "--steps", "3", "--samples", "60", "--chunk", "10", "--device", "cpu"]
CERT = ["--sigma", "0.25", "--eps", "0.1", "--n0", "16", "--n", "64", "--samples", "30", "--chunk", "4",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("resume")
    return train_tiny_run(d)


def _run(trained: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(trained / "run", tmp_path / name))




@pytest.mark.parametrize("command", ["evaluate", "certify"])
def test_a_rerun_computes_only_the_chunks_left_and_gives_the_same_records(trained, tmp_path, command,
                                                                           capsys, monkeypatch):
    import abstain.evaluation
    import abstain.smoothing.records

    args = EVAL if command == "evaluate" else CERT
    n_chunks = 6 if command == "evaluate" else 8
    module, attr = ((abstain.evaluation, "evaluate") if command == "evaluate"
                    else (abstain.smoothing.records, "certify_chunk"))
    ref = _run(trained, tmp_path, "ref")
    assert run_main([command, "--run", ref, *args], capsys)[0] == 0
    run = _run(trained, tmp_path, "run")
    with monkeypatch.context() as m:
        interrupted_after(m, module, attr, 3)
        rc, _, err = run_main([command, "--run", run, *args], capsys)
    assert rc == 130 and "interrupted" in err
    assert len(list((run / WORK).rglob("chunk-*.npz"))) == 3
    with monkeypatch.context() as m:
        log = interrupted_after(m, module, attr, 10**6)
        assert run_main([command, "--run", run, *args], capsys)[0] == 0
    assert len(log) == n_chunks - 3                    # only the chunks left
    a = (ref / "records" / f"{command}.csv").read_text().splitlines()
    b = (run / "records" / f"{command}.csv").read_text().splitlines()
    if command == "certify":                           # but for the wall-clock seconds
        col = a[0].split(",").index("seconds")
        a, b = ([",".join(f for i, f in enumerate(r.split(",")) if i != col) for r in rows] for rows in (a, b))
    assert a == b
    assert not (run / WORK).exists()


def test_abstain_is_resumable_and_its_records_do_not_depend_on_the_chunking(trained, tmp_path, capsys,
                                                                            monkeypatch):
    """``abstain abstain`` runs in chunks of a ChunkedJob like evaluate and certify: a rerun after
    an interruption computes only the chunks left, and the records equal an uninterrupted
    run's, for any chunk size (issue 26, item 4)."""
    import abstain.abstain_job

    def argv(run: Path, chunk: int) -> list:
        return ["abstain", "--robust", run, "--core", run, "--selector", "eri", "--eps", "0.05", "--steps", "3",
                "--samples", "60", "--batch-size", "10", "--chunk", str(chunk), "--device", "cpu"]

    name = Path("records") / "abstain-eri-eps0.05.csv"
    ref = _run(trained, tmp_path, "ref")
    assert run_main(argv(ref, 60), capsys)[0] == 0
    run = _run(trained, tmp_path, "run")
    with monkeypatch.context() as m:
        interrupted_after(m, abstain.abstain_job, "compose_columns", 2)
        rc, _, err = run_main(argv(run, 10), capsys)
    assert rc == 130 and "interrupted" in err
    assert len(list((run / WORK).rglob("chunk-*.npz"))) == 2 and not (run / name).exists()
    with monkeypatch.context() as m:
        log = interrupted_after(m, abstain.abstain_job, "compose_columns", 10**6)
        assert run_main(argv(run, 10), capsys)[0] == 0
    assert len(log) == 4                                # only the chunks left
    assert (ref / name).read_text() == (run / name).read_text()
    ref_results = json.loads((ref / "results.json").read_text())["abstain-eri"]
    run_results = json.loads((run / "results.json").read_text())["abstain-eri"]
    assert ref_results["0.05"] == run_results["0.05"]
    assert not (run / WORK).exists()


def test_chunks_of_another_command_or_model_are_not_reused(trained, tmp_path, capsys, monkeypatch):
    import abstain.evaluation
    from safetensors.torch import load_file, save_file

    run = _run(trained, tmp_path, "run")
    with monkeypatch.context() as m:
        interrupted_after(m, abstain.evaluation, "evaluate", 3)
        assert run_main(["evaluate", "--run", run, *EVAL], capsys)[0] == 130
    for change in (["--steps", "4"], ["--seed", "1"]):   # another command: starts afresh
        with monkeypatch.context() as m:
            log = interrupted_after(m, abstain.evaluation, "evaluate", 10**6)
            argv = ["evaluate", "--run", run, *EVAL, *change, "--out", tmp_path / f"o{change[0]}"]
            assert run_main(argv, capsys)[0] == 0
        assert len(log) == 6
    w = load_file(str(run / "model.safetensors"))      # a retrained model: starts afresh
    first = sorted(w)[0]
    w[first] = w[first] + 0.01
    save_file(w, str(run / "model.safetensors"))
    with monkeypatch.context() as m:
        log = interrupted_after(m, abstain.evaluation, "evaluate", 10**6)
        assert run_main(["evaluate", "--run", run, *EVAL], capsys)[0] == 0
    assert len(log) == 6


def test_certify_holds_one_chunk_of_inputs_at_a_time(trained, tmp_path, capsys, monkeypatch):
    import abstain.smoothing.records

    real, sizes = abstain.smoothing.records.certify_chunk, []

    def spy(plan, k, x, y, index):
        sizes.append(x.shape[0])
        return real(plan, k, x, y, index)

    monkeypatch.setattr(abstain.smoothing.records, "certify_chunk", spy)
    run = _run(trained, tmp_path, "run")
    assert run_main(["certify", "--run", run, *CERT], capsys)[0] == 0
    assert sizes == [4] * 7 + [2]


def _start(args: list, tmp_path: Path, sigint_ignored: bool = False) -> subprocess.Popen:
    """The CLI in a subprocess; ``sigint_ignored``: started with SIGINT ignored, as a shell
    script's ``cmd &`` starts it (an ignored signal is inherited through exec)."""
    cmd = [sys.executable, "-m", "abstain", *map(str, args)]
    if sigint_ignored:
        cmd = ["sh", "-c", 'trap "" INT; exec "$0" "$@"', *cmd]
    return subprocess.Popen(cmd, cwd=tmp_path, env=cli_env({"ABSTAIN_PROGRESS": "1", "ABSTAIN_QUIET": "0"}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_sigterm_stops_train_with_a_checkpoint(trained, tmp_path):
    cfg = tmp_path / "long.toml"
    cfg.write_text(gauss3_config(epochs=40))
    out = tmp_path / "r"
    p = _start(["train", "--config", cfg, "--out", out, "--device", "cpu"], tmp_path)
    deadline = time.time() + 120
    while not (out / "train_state.pt").exists() and time.time() < deadline:   # after epoch 1
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    err = err.decode()
    assert p.returncode == 130, err[-2000:]
    assert "SIGTERM received" in err and "--resume" in err and "Traceback" not in err
    from abstain.checkpoint import load_train_state

    state = load_train_state(out)
    assert not state["finished"] and (state["epoch"], state["batch"]) > (1, 0)


@pytest.mark.parametrize("sig,sigint_ignored", [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["sigterm", "sigint-started-ignored"])
def test_stop_signals_stop_evaluate_like_ctrl_c(sig, sigint_ignored, trained, tmp_path):
    """SIGTERM stops evaluate like Ctrl-C; so does SIGINT when the command was started with
    SIGINT ignored (a suite run in the background once made every SIGINT of the kill test miss)."""
    run = _run(trained, tmp_path, "run")
    p = _start(["evaluate", "--run", run, "--eps", "0.05", "--steps", "200", "--samples", "400", "--chunk", "20",
                "--device", "cpu"], tmp_path, sigint_ignored)
    deadline = time.time() + 120
    while not list((run / WORK).rglob("chunk-*.npz")) and time.time() < deadline:
        time.sleep(0.02)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    err = err.decode()
    assert p.returncode == 130 and "interrupted" in err and "Traceback" not in err, err[-2000:]
    assert list((run / WORK).rglob("chunk-*.npz")) and not (run / "records" / "evaluate.csv").exists()

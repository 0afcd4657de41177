"""A read-only output, a full disk and outputs through symlinks, for real (issue 25, item 7):
the CLI runs in a subprocess whose writes really fail.

* read-only: the directory is ``chmod 0555``; as root (who writes anyway) the child also
  drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from its capability bounding set
  (``prctl(PR_CAPBSET_DROP)``), so the permission bits hold for it;
* full disk: ``RLIMIT_FSIZE`` in the child (no tmpfs without root here), SIGXFSZ ignored so
  the write fails with EFBIG as it would with ENOSPC, at limits chosen so that the first
  write, a chunk, or the final records fail.

Every failure is one line, exit 2; nothing half-written is left; an earlier result is
byte-identical afterwards; the same command without the obstacle then gives the records of
an uninterrupted run. Found: EFBIG gave a traceback (exit 1); now one line naming the
file-size limit (``cli._USER_OS_ERRORS``).
"""
from __future__ import annotations

import ctypes
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from reliability_helpers import (assert_user_error, check_tree_consistent, cli_env, gauss3_config, one_thread,  # noqa: F401
                                 train_tiny_run, tree_snapshot)

EVAL = ["--eps", "0.05", "--steps", "2", "--samples", "200", "--chunk", "50", "--device", "cpu"]


def _obstacle(fsize: int | None = None, drop_dac: bool = False):
    def setup() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        if drop_dac and os.geteuid() == 0:
            libc = ctypes.CDLL(None, use_errno=True)
            for cap in (1, 2):           # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
                if libc.prctl(24, cap, 0, 0, 0) != 0:    # PR_CAPBSET_DROP
                    os._exit(99)
    return setup


def _cli(args, **obstacle) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "abstain", *map(str, args)], capture_output=True, text=True,
                       timeout=300, env=cli_env(), preexec_fn=_obstacle(**obstacle))
    assert r.returncode != 99, "could not drop CAP_DAC_OVERRIDE"
    return r


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("disk")) / "run"


@pytest.fixture(scope="module")
def reference(trained, tmp_path_factory) -> bytes:
    """The records of an uninterrupted ``evaluate``."""
    run = tmp_path_factory.mktemp("ref") / "run"
    shutil.copytree(trained, run)
    r = _cli(["evaluate", "--run", run, *EVAL])
    assert r.returncode == 0, r.stderr
    return (run / "records" / "evaluate.csv").read_bytes()


def _copy(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


@pytest.mark.parametrize("limit", [300, 2000, 4000])
def test_evaluate_on_a_full_disk_is_one_line_and_leaves_nothing_half_written(trained, reference, tmp_path, limit):
    run = _copy(trained, tmp_path)
    before = tree_snapshot(run)
    r = _cli(["evaluate", "--run", run, *EVAL], fsize=limit)
    assert r.returncode == 2, r.stderr[-3000:]
    assert_user_error(r, "File too large")
    check_tree_consistent(run)
    after = tree_snapshot(run)
    assert {k: v for k, v in after.items() if k in before} == before     # nothing earlier touched
    assert not (run / "records" / "evaluate.csv").exists()
    r = _cli(["evaluate", "--run", run, *EVAL])                            # the disk has room again
    assert r.returncode == 0, r.stderr
    assert (run / "records" / "evaluate.csv").read_bytes() == reference


def test_a_failed_overwrite_keeps_the_earlier_results(trained, reference, tmp_path):
    run = _copy(trained, tmp_path)
    assert _cli(["evaluate", "--run", run, *EVAL]).returncode == 0
    before = tree_snapshot(run)
    size = len(before["records/evaluate.csv"])
    other = ["--run", run, "--eps", "0.1", *EVAL[2:], "--overwrite"]
    r = _cli(["evaluate", *other], fsize=size - 1)        # the chunks fit, the new records do not
    assert r.returncode == 2, r.stderr[-3000:]
    assert_user_error(r, "File too large")
    after = tree_snapshot(run)
    assert {k: after.get(k) for k in before} == before, "an earlier result was changed"
    assert not [k for k in after if k not in before and not k.startswith(".abstain-work")], after.keys()
    check_tree_consistent(run)


def test_train_on_a_full_disk_then_resume_gives_the_uninterrupted_weights(trained, tmp_path):
    (tmp_path / "c.toml").write_text(gauss3_config())
    out = tmp_path / "new"
    r = _cli(["train", "--config", tmp_path / "c.toml", "--out", out, "--device", "cpu"], fsize=20_000)
    assert r.returncode == 2, r.stderr[-3000:]
    assert_user_error(r, "File too large")
    if out.exists():
        check_tree_consistent(out)
    args = ["train", "--config", tmp_path / "c.toml", "--out", out, "--device", "cpu"]
    if (out / "config.toml").exists():
        args.append("--resume")
    elif out.exists() and any(out.iterdir()):
        args.append("--overwrite")
    r = _cli(args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "model.safetensors").read_bytes() == (trained / "model.safetensors").read_bytes()


@pytest.mark.parametrize("where", ["run", "records"])
def test_a_read_only_output_is_one_line_and_nothing_changes(trained, tmp_path, where):
    run = _copy(trained, tmp_path)
    if where == "records":
        assert _cli(["evaluate", "--run", run, *EVAL]).returncode == 0
    before = tree_snapshot(run)
    target = run if where == "run" else run / "records"
    target.chmod(0o555)
    try:
        args = ["evaluate", "--run", run, *EVAL] + (["--eps", "0.1", "--overwrite"] if where == "records" else [])
        r = _cli(args, drop_dac=True)
    finally:
        target.chmod(0o755)
    assert r.returncode == 2, r.stderr[-3000:]
    assert_user_error(r, "Permission denied")
    assert {k: v for k, v in tree_snapshot(run).items() if not k.startswith(".abstain-work")} == before
    check_tree_consistent(run)


def test_train_into_a_read_only_parent_is_one_line(tmp_path):
    (tmp_path / "c.toml").write_text(gauss3_config())
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        r = _cli(["train", "--config", tmp_path / "c.toml", "--out", parent / "run", "--device", "cpu"], drop_dac=True)
    finally:
        parent.chmod(0o755)
    assert r.returncode == 2, r.stderr[-3000:]
    assert_user_error(r, "Permission denied")
    assert not any(parent.iterdir())


def test_a_records_directory_that_links_elsewhere_is_written_through_the_link(trained, reference, tmp_path):
    """The run's ``records`` is the user's symlink to another disk: followed, as a link to the
    output directory itself is (``test_hostile_probes``); results.json as a link is replaced,
    never written through."""
    run = _copy(trained, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / "records").symlink_to(elsewhere)
    outside = tmp_path / "outside.json"
    outside.write_text('{"keep": 1}')
    (run / "results.json").unlink(missing_ok=True)
    (run / "results.json").symlink_to(outside)
    r = _cli(["evaluate", "--run", run, *EVAL])
    assert r.returncode == 0, r.stderr
    assert (elsewhere / "evaluate.csv").read_bytes() == reference
    assert outside.read_text() == '{"keep": 1}'
    assert not (run / "results.json").is_symlink() and stat.S_ISREG((run / "results.json").lstat().st_mode)


def test_a_failed_command_puts_its_outputs_back_and_a_finished_one_keeps_them(tmp_path):
    """:func:`abstain.outputs.claim` on its own: an output replaced by the failed command gets
    its old bytes back, one it created is removed, and no backup link is left; after success
    the new files stay."""
    from abstain.io import atomic_write_text
    from abstain.outputs import BACKUP, Output, claim

    out = tmp_path / "o"
    out.mkdir()
    old, new = out / "results.json", out / "records" / "x.csv"
    old.write_text('{"evaluate": 1}')
    outputs = [Output(new, "evaluate"), Output(old, "results", section="evaluate", exclusive=False)]
    with pytest.raises(OSError):
        with claim(out, outputs, overwrite=True):
            atomic_write_text(new, "index\n0\n")
            atomic_write_text(old, '{"evaluate": 2}')
            raise OSError(27, "File too large")
    assert old.read_text() == '{"evaluate": 1}' and not new.exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(BACKUP)]
    with claim(out, outputs, overwrite=True):
        atomic_write_text(new, "index\n0\n")
        atomic_write_text(old, '{"evaluate": 2}')
    assert old.read_text() == '{"evaluate": 2}' and new.read_text() == "index\n0\n"
    assert not [p for p in out.rglob("*") if p.name.endswith(BACKUP)]

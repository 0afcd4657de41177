"""A run directory never runs code, and its files are opened only if they are regular files
(issue 25, item 2).

The issue's reproductions: a ``meta.json`` whose ``arch`` is ``"m.evil.evil:f"`` imported
``m/evil/evil.py`` from the working directory (Python imports a folder without
``__init__.py``) and ran it before the error; ``"arch": "this:x"`` imported a standard
module; a FIFO ``model.safetensors`` blocked ``open()`` forever; ``model_kwargs = {"hidden":
-1}`` gave a traceback. A run made from ``MODULE:FACTORY`` loads back only with the factory
named again (``--model``) or ``--trust-code``; ``train --init RUN`` goes through the same
size guard as every other load.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from abstain.checkpoint import META_FILE, MODEL_FILE

from reliability_helpers import assert_clean_refusal, assert_user_error, one_thread, run_cli, run_main, \
    train_tiny_run  # noqa: F401

EVAL = ["--eps", "0.05", "--steps", "2", "--samples", "10", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("runs"))


@pytest.fixture
def run(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained / "run", tmp_path / "run"))


def _edit_meta(run: Path, **changes) -> None:
    meta = json.loads((run / META_FILE).read_text())
    meta.update(changes)
    (run / META_FILE).write_text(json.dumps(meta))


def _evil_package(root: Path, marker: Path) -> None:
    d = root / "m" / "evil"
    d.mkdir(parents=True)
    (d / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef f(num_classes=3):\n    raise SystemExit\n")


@pytest.mark.parametrize("arch", ["m.evil.evil:f", "m.evil.evil:nothing"])
def test_a_meta_naming_importable_code_runs_nothing(run, tmp_path, arch, capsys, monkeypatch):
    marker = tmp_path / "marker"
    _evil_package(tmp_path / "cwd", marker)
    monkeypatch.chdir(tmp_path / "cwd")
    _edit_meta(run, arch=arch)
    for command in (["evaluate", "--run", run, *EVAL],
                    ["abstain", "--robust", run, "--core", run, "--selector", "eri", *EVAL]):
        rc, _, err = run_main(command, capsys)
        assert rc == 2
        assert_clean_refusal(rc, err, "never runs code", "--trust-code", f"--model {arch}")
        assert not marker.exists() and "m.evil.evil" not in sys.modules
    rc, _, err = run_main(["evaluate", "--run", run, "--model", "other_mod:make", *EVAL], capsys)
    assert rc == 2 and "not 'other_mod:make'" in assert_clean_refusal(rc, err)
    assert not marker.exists()


@pytest.mark.parametrize("arch", ["this", "os.system", "../../m", "mlp "])
def test_a_meta_arch_that_is_not_a_built_in_is_refused_before_any_import(run, arch, capsys):
    before = set(sys.modules)
    _edit_meta(run, arch=arch)
    rc, _, err = run_main(["evaluate", "--run", run, *EVAL], capsys)
    assert rc == 2
    assert_clean_refusal(rc, err, "not a built-in architecture")
    assert "this" not in set(sys.modules) - before


def test_this_colon_x_imports_no_standard_module(run, capsys):
    _edit_meta(run, arch="this:x")
    before = "this" in sys.modules
    rc, _, err = run_main(["evaluate", "--run", run, *EVAL], capsys)
    assert rc == 2 and "--trust-code" in assert_clean_refusal(rc, err)
    assert ("this" in sys.modules) == before


def test_trust_code_imports_the_recorded_factory_on_purpose(run, tmp_path, capsys, monkeypatch):
    """With --trust-code the recorded factory is imported (and its failure is one line)."""
    marker = tmp_path / "marker"
    _evil_package(tmp_path / "cwd", marker)
    monkeypatch.chdir(tmp_path / "cwd")
    _edit_meta(run, arch="m.evil.evil:f", model_kwargs={})      # as `train --init MODULE:FACTORY` writes it
    rc, _, err = run_main(["evaluate", "--run", run, "--trust-code", *EVAL], capsys)
    assert rc == 2 and marker.exists(), err          # it ran because the user said so
    assert_clean_refusal(rc, err, "m.evil.evil:f")
    sys.modules.pop("m.evil.evil", None), sys.modules.pop("m.evil", None), sys.modules.pop("m", None)


@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "socket-free-link-to-dir"])
def test_weights_that_are_not_a_regular_file_are_refused_without_blocking(run, kind):
    w = run / MODEL_FILE
    w.unlink()
    if kind == "fifo":
        os.mkfifo(w)
    elif kind == "directory":
        w.mkdir()
    elif kind == "device":
        w.symlink_to("/dev/zero")
    else:
        w.symlink_to(run)
    t0 = time.monotonic()
    r = run_cli(["evaluate", "--run", run, *EVAL], timeout=120)
    assert time.monotonic() - t0 < 120
    want = {"fifo": "a FIFO", "directory": "a directory", "device": "a device"}.get(kind, "a directory")
    assert r.returncode == 2
    assert_user_error(r, "not a regular file", want)
    assert not (run / "records").exists()


def test_a_meta_json_that_is_a_fifo_is_not_read(run, capsys):
    m = run / META_FILE
    m.unlink()
    os.mkfifo(m)
    rc, _, err = run_main(["evaluate", "--run", run, *EVAL], capsys)     # would block if opened
    assert rc == 2
    assert_clean_refusal(rc, err, "not a run directory")


@pytest.mark.parametrize("kwargs", [{"hidden": -1}, {"depth": -3}, {"hidden": "wide"}, {"nope": 1}])
def test_edited_model_kwargs_are_one_line(run, kwargs, capsys):
    meta = json.loads((run / META_FILE).read_text())
    _edit_meta(run, model_kwargs={**meta.get("model_kwargs", {}), **kwargs})
    rc, _, err = run_main(["evaluate", "--run", run, *EVAL], capsys)
    assert rc == 2
    assert_clean_refusal(rc, err, str(run))


def test_train_init_from_a_run_goes_through_the_size_guard(run, tmp_path, capsys):
    meta = json.loads((run / META_FILE).read_text())
    _edit_meta(run, model_kwargs={**meta.get("model_kwargs", {}), "hidden": 100_000})
    rc, _, err = run_main(["train", "--config", _config(tmp_path),
                           "--init", run, "--out", tmp_path / "t", "--device", "cpu"], capsys)
    assert rc == 2
    assert_clean_refusal(rc, err, "does not belong to these weights")


def _config(tmp_path: Path) -> Path:
    from reliability_helpers import gauss3_config

    p = tmp_path / "c.toml"
    p.write_text(gauss3_config())
    return p

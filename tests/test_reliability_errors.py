"""User errors: one line, exit 2, nothing left behind (issue 16, item 3).

Each probe is a defect found by driving the CLI with hostile or mistaken input: malformed
``meta.json`` values, a ``train_state.pt`` of the wrong structure or a zip bomb, factories
that raise or need arguments, double/half models, unwritable outputs, nested TOML/JSON,
decompression-bomb images and seeds no generator takes. Every one must give exit status 2,
one line on stderr naming the problem, no traceback, and leave the directories as they were
(so the corrected command runs as it is). Sizes are checked before anything is allocated:
the probes that used to take gigabytes are run in a child whose peak RSS is measured.

``PROBES`` counts the probes per kind; the last test prints it (``pytest -s``).
"""
from __future__ import annotations

import collections
import errno
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from reliability_helpers import (  # noqa: F401
    assert_clean_refusal, cli_env, one_thread, run_main, train_tiny_run, tree_snapshot)

PROBES: collections.Counter = collections.Counter()
EVAL = ["--eps", "0.05", "--steps", "1", "--samples", "10", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("errors")
    return train_tiny_run(d)


def _copy(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained / "run", tmp_path / "run"))


def _refused(kind: str, argv: list, capsys, watch: Path, *needles: str) -> str:
    """Run ``argv``; exit 2, one line naming ``needles``, and ``watch`` exactly as before."""
    before = tree_snapshot(watch)
    existed = watch.exists()
    rc, _, err = run_main(argv, capsys)
    msg = assert_clean_refusal(rc, err, *needles)
    assert rc == 2, (rc, err)
    assert watch.exists() == existed and tree_snapshot(watch) == before, f"{kind}: files changed"
    PROBES[kind] += 1
    return msg


# ---------------------------------------------------------------- meta.json
META_EDITS = {
    "num_classes inf": (lambda m: m.update(num_classes=float("inf")), "num_classes"),
    "num_classes list": (lambda m: m.update(num_classes=[3]), "num_classes"),
    "num_classes str": (lambda m: m.update(num_classes="x"), "num_classes"),
    "num_classes bool": (lambda m: m.update(num_classes=True), "num_classes"),
    "num_classes -1": (lambda m: m.update(num_classes=-1), "num_classes"),
    "num_classes 4e6": (lambda m: m.update(num_classes=4_000_000), "num_classes"),
    "num_classes 90000": (lambda m: m.update(num_classes=90_000), "does not belong to these weights"),
    "arch list": (lambda m: m.update(arch=["mlp"]), "arch"),
    "arch unknown": (lambda m: m.update(arch="no-such-net"), "no-such-net"),
    "model_kwargs list": (lambda m: m.update(model_kwargs=[1, 2]), "model_kwargs"),
    "model_kwargs wrong type": (lambda m: m.update(model_kwargs={"hidden": "x"}), "meta.json"),
    "model_kwargs huge": (lambda m: m.update(model_kwargs={"hidden": 10**9}), "does not belong"),
    "dataset list": (lambda m: m.update(dataset=["gauss3"]), "dataset"),
    "dataset unknown": (lambda m: m.update(dataset="nope"), "nope"),
    "data_seed inf": (lambda m: m.update(data_seed=float("inf")), "data_seed"),
    "data_seed str": (lambda m: m.update(data_seed="x"), "data_seed"),
    "data_root int": (lambda m: m.update(data_root=5), "data_root"),
    "config list": (lambda m: m.update(config=[1]), "config"),
}


@pytest.mark.parametrize("edit", sorted(META_EDITS))
def test_malformed_meta_json(trained, tmp_path, edit, capsys):
    run = _copy(trained, tmp_path)
    meta = json.loads((run / "meta.json").read_text())
    change, needle = META_EDITS[edit]
    change(meta)
    (run / "meta.json").write_text(json.dumps(meta))
    _refused("meta.json", ["evaluate", "--run", run, *EVAL], capsys, run, needle)


@pytest.mark.parametrize("text", ['[1, 2]', '"x"', "[" * 100_000 + "]" * 100_000, '{"arch": "mlp", "num_cl'])
def test_meta_json_that_is_no_object(trained, tmp_path, text, capsys):
    run = _copy(trained, tmp_path)
    (run / "meta.json").write_text(text)
    _refused("meta.json", ["evaluate", "--run", run, *EVAL], capsys, run, "meta.json")


# ---------------------------------------------------------------- train_state.pt
def _zip_bomb(path: Path, nbytes: int = 200_000_000) -> Path:
    """A torch.save file re-zipped with deflate: a few hundred KB that decompress to ``nbytes``."""
    plain = path.with_suffix(".plain")
    torch.save(torch.zeros(nbytes, dtype=torch.uint8), plain)
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    plain.unlink()
    return path


def _state_edit(kind: str, path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["finished"] = False
    if kind == "a list":
        torch.save([1, 2, 3], path)
        return
    if kind == "no optimizer":
        del state["optimizer"]
    elif kind == "optimizer of another model":
        state["optimizer"] = {"state": {}, "param_groups": [{"params": [99]}]}
    elif kind == "weights not tensors":
        state["model_last"] = {"w": [1.0, 2.0]}
    elif kind == "epoch a string":
        state["epoch"] = "1"
    torch.save(state, path)


@pytest.mark.parametrize("kind", ["a list", "no optimizer", "optimizer of another model", "weights not tensors",
                                  "epoch a string", "zip bomb"])
def test_train_state_of_the_wrong_structure(trained, tmp_path, kind, capsys):
    run = _copy(trained, tmp_path)
    if kind == "zip bomb":
        _zip_bomb(run / "train_state.pt", 64_000_000)
    else:
        _state_edit(kind, run / "train_state.pt")
    _refused("train_state.pt", ["train", "--config", trained / "c.toml", "--out", run, "--resume",
                                "--device", "cpu"], capsys, run, "train_state.pt")


# ---------------------------------------------------------------- factories
class Lin(nn.Module):
    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.lin = nn.Linear(2, k)

    def forward(self, x):
        return self.lin(x)


def raises(num_classes: int = 3):
    raise RuntimeError("boom")


def needs_args(a, b):
    return Lin()


def exits(num_classes: int = 3):
    raise SystemExit(3)


def double(num_classes: int = 3):
    return Lin(num_classes).double()


def half(num_classes: int = 3):
    return Lin(num_classes).half()


def not_a_module(num_classes: int = 3):
    return 5


FACTORIES = {f"{__name__}:raises": "boom", f"{__name__}:needs_args": "a, b", f"{__name__}:exits": "SystemExit",
             f"{__name__}:double": "Double", f"{__name__}:half": "Half", f"{__name__}:not_a_module": "nn.Module",
             f"{__name__}:nothing_here": "nothing_here", "no_such_module_xyz:make": "no_such_module_xyz",
             "broken_syntax_mod:make": "SyntaxError", "broken_import_mod:make": "nonexistent_pkg_xyz"}


@pytest.mark.parametrize("spec", sorted(FACTORIES))
@pytest.mark.parametrize("command", ["evaluate", "certify"])
def test_factories_that_fail(spec, command, tmp_path, capsys, monkeypatch):
    (tmp_path / "broken_syntax_mod.py").write_text("def make(:\n")
    (tmp_path / "broken_import_mod.py").write_text("import nonexistent_pkg_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    extra = EVAL if command == "evaluate" else ["--sigma", "0.25", "--eps", "0.1", "--n0", "8", "--n", "64",
                                                 "--samples", "4", "--device", "cpu"]
    _refused("factory", [command, "--model", spec, "--random-init", "--data", "gauss3", "--out", out, *extra], capsys, out,
             FACTORIES[spec])


# ---------------------------------------------------------------- unwritable outputs
@pytest.mark.parametrize("err,where", [(errno.EROFS, "first write"), (errno.EACCES, "first write"),
                                       (errno.ENOSPC, "first write"), (errno.ENOSPC, "a chunk")])
def test_unwritable_output_fails_before_the_compute(trained, tmp_path, err, where, capsys, monkeypatch):
    """A read-only filesystem or a full disk: refused at the first write, which comes before
    any compute (the manifest) or after one chunk; one line; nothing half-written."""
    import abstain.evaluation
    import abstain.io

    run = _copy(trained, tmp_path)
    real = abstain.io.atomic_write
    calls = collections.Counter()

    def failing(path, write, mode="wb"):
        if where == "first write" or "chunk-" in str(path):
            raise OSError(err, os.strerror(err), str(path))
        return real(path, write, mode)

    real_eval = abstain.evaluation.evaluate

    def counting(*a, **k):
        calls["evaluate"] += 1
        return real_eval(*a, **k)

    monkeypatch.setattr(abstain.io, "atomic_write", failing)
    monkeypatch.setattr(abstain.evaluation, "evaluate", counting)
    msg = _refused("unwritable output", ["evaluate", "--run", run, *EVAL, "--chunk", "5"], capsys, run,
                   os.strerror(err))
    assert calls["evaluate"] == (0 if where == "first write" else 1), (calls, msg)


# ---------------------------------------------------------------- nested TOML / JSON
@pytest.mark.parametrize("text", ["a = " + "[" * 50_000 + "]" * 50_000,
                                  '[data]\nname = "gauss3"\n[model]\narch = "mlp"\nkwargs = ' + "{a=" * 3000 + "1"
                                  + "}" * 3000])
def test_deeply_nested_toml(tmp_path, text, capsys):
    cfg = tmp_path / "deep.toml"
    cfg.write_text(text)
    _refused("nested input", ["train", "--config", cfg, "--out", tmp_path / "r", "--device", "cpu"], capsys,
             tmp_path / "r", "nested too deeply")


def test_deeply_nested_set_value(trained, tmp_path, capsys):
    _refused("nested input", ["train", "--config", trained / "c.toml", "--out", tmp_path / "r", "--device", "cpu",
                              "--set", "model.kwargs=" + "[" * 5000 + "]" * 5000], capsys, tmp_path / "r",
             "nested too deeply")


def test_deeply_nested_results_json(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    (run / "results.json").write_text("[" * 100_000 + "]" * 100_000)
    _refused("nested input", ["evaluate", "--run", run, *EVAL], capsys, run, "results.json")


# ---------------------------------------------------------------- images
def _folder(root: Path, bomb: tuple[int, int]) -> Path:
    import numpy as np
    from PIL import Image

    for split in ("train", "test"):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(d / f"{i}.png")
    Image.new("1", bomb).save(root / "test" / "a" / "bomb.png")   # a few KB
    return root


@pytest.mark.parametrize("side", [9000, 20000])
def test_decompression_bomb_images(tmp_path, side, capsys):
    root = _folder(tmp_path / "imgs", (side, side))
    assert (root / "test" / "a" / "bomb.png").stat().st_size < 200_000
    _refused("image size", ["evaluate", "--model", f"{__name__}:ok2", "--random-init", "--data", "folder", "--data-root", root,
                            "--out", tmp_path / "o", *EVAL], capsys, tmp_path / "o", "bomb.png", "pixels")


def ok2(num_classes: int = 2):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))


def test_mtsd_bomb_image(tmp_path, capsys):
    from PIL import Image

    from test_mtsd import _fixture

    ann, img, _ = _fixture(tmp_path)
    meta = json.loads((ann / "imgA.json").read_text())
    meta.update(width=9000, height=9000)
    (ann / "imgA.json").write_text(json.dumps(meta))
    (img / "imgA.jpg").unlink()
    Image.new("1", (9000, 9000)).save(img / "imgA.png")
    _refused("image size", ["data", "mtsd", "--annotations", ann, "--images", img, "--out", tmp_path / "crops"],
             capsys, tmp_path / "crops", "pixels")


# ---------------------------------------------------------------- seeds
@pytest.mark.parametrize("seed", [str(2**70), "-5"])
@pytest.mark.parametrize("command", ["evaluate", "certify", "abstain", "train"])
def test_seeds_no_generator_takes(trained, tmp_path, seed, command, capsys):
    run = _copy(trained, tmp_path)
    argv = {"evaluate": ["evaluate", "--run", run, *EVAL[:-2], "--seed", seed],
            "certify": ["certify", "--run", run, "--sigma", "0.25", "--eps", "0.1", "--n0", "8", "--n", "64",
                        "--samples", "4", "--seed", seed],
            "abstain": ["abstain", "--robust", run, "--core", run, "--selector", "eri", "--eps", "0.05",
                        "--steps", "1", "--samples", "10", "--seed", seed],
            "train": ["train", "--config", trained / "c.toml", "--out", tmp_path / "new", "--set",
                      f"train.seed={seed}"]}[command]
    watch = tmp_path / "new" if command == "train" else run
    _refused("seed", [*argv, "--device", "cpu"], capsys, watch, "seed")


# ---------------------------------------------------------------- sizes checked before allocating
_PEAK = """
import atexit, os, resource, runpy, sys

def peak():
    try:   # this process's own high-water mark (Linux); not counting the parent's pages at fork
        kb = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sys.stderr.write(f"\\nPEAK-KB {kb}\\n")

atexit.register(peak)
sys.argv = ["abstain", *sys.argv[1:]]
runpy.run_module("abstain", run_name="__main__", alter_sys=True)
"""


def _peak_rss_mb(argv: list) -> tuple[int, float, str]:
    """Exit status, peak RSS (MB) and stderr of ``abstain ARGV`` in a child process."""
    r = subprocess.run([sys.executable, "-c", _PEAK, *map(str, argv)], env=cli_env(), capture_output=True,
                       text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("PEAK-KB "), r.stderr[-2000:]
    return r.returncode, int(lines[-1].split()[1]) / 1024, "\n".join(lines[:-1])


@pytest.fixture(scope="module")
def base_mb(trained) -> float:
    """Peak RSS of a command that imports torch, loads a run and refuses (a bad --eps)."""
    rc, mb, err = _peak_rss_mb(["evaluate", "--run", trained / "run", *EVAL, "--batch-size", "0"])
    assert rc == 2, err
    return mb


@pytest.mark.parametrize("case", ["num_classes 4e7", "hidden 1e5", "zip bomb weights"])
def test_sizes_are_checked_before_allocating(trained, tmp_path, case, base_mb):
    """The probes that took gigabytes: refused within the interpreter's own footprint."""
    run = _copy(trained, tmp_path)
    meta = json.loads((run / "meta.json").read_text())
    if case == "num_classes 4e7":
        meta["num_classes"] = 40_000_000
        argv = ["evaluate", "--run", run, *EVAL]
    elif case == "hidden 1e5":
        meta["model_kwargs"] = {"hidden": 100_000}
        argv = ["evaluate", "--run", run, *EVAL]
    else:
        argv = ["evaluate", "--model", "abstain.models.small:mlp", "--weights", _zip_bomb(tmp_path / "w.pt", 300_000_000),
                "--data", "gauss3", "--out", tmp_path / "o", *EVAL]
    (run / "meta.json").write_text(json.dumps(meta))
    rc, mb, err = _peak_rss_mb(argv)
    assert rc == 2 and "Traceback" not in err, err
    assert ("decompresses" if case == "zip bomb weights" else "meta.json") in err, err
    assert mb < base_mb + 150, f"{case}: peak RSS {mb:.0f} MB (torch imported: {base_mb:.0f} MB)"
    PROBES["size before allocating"] += 1


def test_zzz_report_probe_counts():
    print("\n[user-error probes] " + json.dumps(dict(PROBES), sort_keys=True) + f" total {sum(PROBES.values())}")
    assert sum(PROBES.values()) >= 60

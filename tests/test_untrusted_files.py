"""Untrusted files never run code (issue 11, part 3).

A pickle whose unpickling would create a marker file (``__reduce__`` gadgets calling
``open`` and ``os.system``) is fed to every place that reads a user file; the marker
must never appear and the error must be a clear :class:`AbstainError` (CLI: non-zero
exit, one line, no traceback). A static check parses every module under ``src/`` and
refuses any unpickling call that is not restricted.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from abstain import checkpoint, models
from abstain.errors import CheckpointError

from reliability_helpers import (SRC, assert_clean_refusal, assert_user_error, malicious_payloads,
                                 one_thread, run_cli, run_main, write_fake_cifar10,  # noqa: F401
                                 write_raw_pickle, write_torch_pickle)

# Every bad file written by this module is counted here (printed at the end of the run
# for the closing note).
BAD_FILES: list[str] = []


def _bad_files(tmp_path: Path, name: str = "evil.pt") -> list[tuple[Path, Path]]:
    """(file, marker) pairs: each payload both as a raw pickle and as a torch.save zip."""
    out = []
    for kind in ("raw", "zip"):
        marker = tmp_path / f"PWNED-{kind}"
        for label, obj in malicious_payloads(marker).items():
            p = tmp_path / kind / label / name
            (write_raw_pickle if kind == "raw" else write_torch_pickle)(p, obj)
            BAD_FILES.append(f"{kind}/{label}/{name}")
            out.append((p, marker))
    return out


def _no_marker(tmp_path: Path) -> None:
    found = sorted(str(p) for p in tmp_path.rglob("PWNED*"))
    assert not found, f"unpickling ran attacker code: {found}"


# ---------------------------------------------------------------- static check

_UNSAFE_MODULE_CALLS = {
    ("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"),
    ("cPickle", "load"), ("cPickle", "loads"), ("_pickle", "load"), ("_pickle", "loads"),
    ("dill", "load"), ("dill", "loads"), ("joblib", "load"), ("marshal", "load"),
    ("marshal", "loads"), ("shelve", "open"), ("pd", "read_pickle"), ("pandas", "read_pickle"),
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _kw_is_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True
               for k in call.keywords)


def _unsafe_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """Calls that could unpickle arbitrary objects.

    Allowed: ``torch.load(..., weights_only=True)``; ``np.load`` without
    ``allow_pickle=True``; ``<instance>.load()`` of a class that subclasses
    ``pickle.Unpickler`` AND overrides ``find_class`` (the restricted unpickler).
    Refused: ``pickle.load/loads/Unpickler`` directly, unrestricted Unpickler
    subclasses, ``torch.load`` without ``weights_only=True``, ``np.load(allow_pickle=True)``,
    dill/joblib/marshal/shelve/pandas pickles.
    """
    bad: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = {_dotted(b) for b in node.bases}
            if bases & {"pickle.Unpickler", "Unpickler", "_pickle.Unpickler"}:
                methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                if "find_class" not in methods:
                    bad.append((node.lineno, f"class {node.name} subclasses Unpickler without find_class"))
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        parts = tuple(name.split("."))
        if len(parts) >= 2 and parts[-2:] in _UNSAFE_MODULE_CALLS:
            bad.append((node.lineno, f"{name}(...)"))
        elif name in ("torch.load", "torch.serialization.load") and not _kw_is_true(node, "weights_only"):
            bad.append((node.lineno, "torch.load without weights_only=True"))
        elif parts[-1] == "load" and parts[0] in ("np", "numpy") and _kw_is_true(node, "allow_pickle"):
            bad.append((node.lineno, "np.load(allow_pickle=True)"))
        elif parts[-1] == "load" and parts[0] == "yaml" and not any(
                k.arg == "Loader" and "Safe" in _dotted(k.value) for k in node.keywords):
            bad.append((node.lineno, "yaml.load without SafeLoader"))
    # `from pickle import load, loads` then `load(f)`: refuse the import itself
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "_pickle", "dill", "marshal"):
            for alias in node.names:
                if alias.name in ("load", "loads"):
                    bad.append((node.lineno, f"from {node.module} import {alias.name}"))
    return bad


def test_static_no_unrestricted_unpickling_in_src():
    files = sorted((SRC / "abstain").rglob("*.py"))
    assert len(files) >= 20, "source tree not found"
    problems = []
    for f in files:
        tree = ast.parse(f.read_text(), filename=str(f))
        problems += [f"{f.relative_to(SRC)}:{line}: {what}" for line, what in _unsafe_calls(tree)]
    assert not problems, "unrestricted unpickling in src/:\n" + "\n".join(problems)


def test_static_checker_catches_the_unsafe_forms():
    """The checker itself is not vacuous: each unsafe form is flagged, the safe ones pass."""
    unsafe = [
        "import pickle\npickle.load(open('f','rb'))",
        "import pickle\npickle.loads(b'')",
        "import torch\ntorch.load('f')",
        "import torch\ntorch.load('f', weights_only=False)",
        "import numpy as np\nnp.load('f', allow_pickle=True)",
        "import pickle\nclass U(pickle.Unpickler):\n    pass\n",
        "from pickle import loads\n",
        "import pickle\npickle.Unpickler(open('f','rb')).load()",
    ]
    for src in unsafe:
        assert _unsafe_calls(ast.parse(src)), src
    safe = [
        "import torch\ntorch.load('f', map_location='cpu', weights_only=True)",
        "import numpy as np\nnp.load('f')",
        "import pickle\nclass U(pickle.Unpickler):\n    def find_class(self, m, n):\n        raise Exception\n"
        "U(open('f','rb')).load()",
    ]
    for src in safe:
        assert not _unsafe_calls(ast.parse(src)), src


# ---------------------------------------------------------------- library entry points

def test_payloads_are_live(tmp_path):
    """Sanity: unrestricted unpickling of these files DOES create the marker, so the
    tests below would notice a loader that unpickles them."""
    import pickle

    for path, marker in _bad_files(tmp_path / "live"):
        if path.parent.parent.name == "raw":
            with open(path, "rb") as fh:
                pickle.load(fh)
        else:
            torch.load(path, weights_only=False)
        assert marker.exists(), path
        marker.unlink()


def test_load_foreign_state_dict_refuses_gadgets(tmp_path):
    for path, _ in _bad_files(tmp_path):
        with pytest.raises(CheckpointError, match="refusing to unpickle|weights_only"):
            checkpoint.load_foreign_state_dict(path)
    _no_marker(tmp_path)


def _good_run(d: Path) -> Path:
    net = models.create("mlp", 3, in_features=2)
    checkpoint.save_checkpoint(d, net, {"arch": "mlp", "num_classes": 3, "dataset": "gauss3",
                                        "model_kwargs": {"in_features": 2}, "epoch": 1},
                               {"epoch": 1})
    return d


def test_load_train_state_refuses_gadgets(tmp_path):
    for i, (path, _) in enumerate(_bad_files(tmp_path, "train_state.pt")):
        run = _good_run(tmp_path / f"run{i}")
        (run / "train_state.pt").write_bytes(path.read_bytes())
        with pytest.raises(CheckpointError, match="refusing to unpickle|weights_only"):
            checkpoint.load_train_state(run)
    _no_marker(tmp_path)


def test_load_checkpoint_with_pickle_as_weights(tmp_path):
    """A pickle renamed to model.safetensors is rejected as corrupt, never unpickled."""
    for i, (path, _) in enumerate(_bad_files(tmp_path, "model.safetensors")):
        run = _good_run(tmp_path / f"run{i}")
        (run / "model.safetensors").write_bytes(path.read_bytes())
        with pytest.raises(CheckpointError, match="corrupt or truncated"):
            checkpoint.load_checkpoint(run)
    _no_marker(tmp_path)


def test_safetensors_extension_never_unpickled(tmp_path):
    for path, _ in _bad_files(tmp_path, "weights.safetensors"):
        with pytest.raises(CheckpointError):
            checkpoint.load_foreign_state_dict(path)
    _no_marker(tmp_path)


def test_fake_cifar_is_readable(tmp_path):
    """The fake tree is a valid CIFAR-10 (so the refusals below are about the gadgets)."""
    from abstain import data

    write_fake_cifar10(tmp_path)
    ds = data.load("cifar10", "train", root=str(tmp_path))
    assert len(ds) == 20 and ds.input_shape == (3, 32, 32)


@pytest.mark.parametrize("victim,split", [("data_batch_1", "train"), ("data_batch_4", "train"),
                                          ("test_batch", "test"), ("batches.meta", "test")])
def test_cifar_loader_refuses_gadgets(tmp_path, victim, split):
    from abstain import data
    from abstain.errors import DataError

    for path, _ in _bad_files(tmp_path / "bad", victim):
        if path.parent.parent.name != "raw":
            continue  # CIFAR batches are plain pickles
        root = tmp_path / f"root-{path.parent.name}"
        d = write_fake_cifar10(root)
        (d / victim).write_bytes(path.read_bytes())
        with pytest.raises(DataError) as e:
            data.load("cifar10", split, root=str(root))
        assert victim in str(e.value) and ("refusing" in str(e.value) or "unsafe" in str(e.value)), str(e.value)
    _no_marker(tmp_path)


# ---------------------------------------------------------------- the CLI

FACTORY = """
from abstain import models


def net(num_classes):
    return models.create("mlp", num_classes, in_features=2)
"""


def test_evaluate_own_model_refuses_gadget_weights(tmp_path, capsys, monkeypatch):
    (tmp_path / "mymodels.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    for i, (path, _) in enumerate(_bad_files(tmp_path / "bad", "weights.pt")):
        out = tmp_path / f"out{i}"
        rc, _, err = run_main(["evaluate", "--model", "mymodels:net", "--weights", path, "--data", "gauss3",
                               "--eps", "0.1", "--steps", "1", "--samples", "6", "--out", out,
                               "--device", "cpu"], capsys)
        assert_clean_refusal(rc, err, str(path))
        assert not out.exists(), "a refused evaluation wrote files"
    _no_marker(tmp_path)


def _write_config(d: Path, init: str | None) -> Path:
    text = ('[data]\nname = "gauss3"\n[model]\narch = "mlp"\n'
            + (f'init = "{init}"\n' if init else "")
            + '[train]\nloss = "standard"\nepochs = 1\nbatch_size = 64\nlr = 0.05\n')
    p = d / "c.toml"
    p.write_text(text)
    return p


def test_train_refuses_gadget_init(tmp_path, capsys):
    for i, (path, _) in enumerate(_bad_files(tmp_path / "bad", "init.pt")):
        cfg = _write_config(path.parent, str(path))
        out = tmp_path / f"run{i}"
        rc, _, err = run_main(["train", "--config", cfg, "--out", out, "--device", "cpu"], capsys)
        assert_clean_refusal(rc, err, "init.pt")
    _no_marker(tmp_path)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    from abstain import cli

    d = tmp_path_factory.mktemp("good")
    cfg = _write_config(d, None)
    assert cli.main(["train", "--config", str(cfg), "--out", str(d / "run"), "--device", "cpu"]) == 0
    return d / "run"


def test_run_dir_with_gadget_train_state(tmp_path, capsys, trained_run):
    """evaluate/certify read only model.safetensors + meta.json (they may succeed, the
    gadget is never run); train --resume reads train_state.pt and refuses it clearly."""
    import shutil

    for i, (path, _) in enumerate(_bad_files(tmp_path / "bad", "train_state.pt")):
        run = shutil.copytree(trained_run, tmp_path / f"run{i}")
        (run / "train_state.pt").write_bytes(path.read_bytes())
        rc, _, err = run_main(["evaluate", "--run", run, "--eps", "0.1", "--steps", "1", "--samples", "6",
                               "--device", "cpu"], capsys)
        assert rc == 0 or assert_clean_refusal(rc, err, "train_state.pt")
        rc, _, err = run_main(["certify", "--run", run, "--sigma", "0.25", "--eps", "0.1", "--n0", "8",
                               "--n", "50", "--samples", "3", "--noise-batch-size", "50", "--device", "cpu"], capsys)
        assert rc == 0 or assert_clean_refusal(rc, err, "train_state.pt")
        rc, _, err = run_main(["train", "--config", run / "config.toml", "--out", run, "--resume",
                               "--device", "cpu"], capsys)
        assert_clean_refusal(rc, err, "train_state.pt")
    _no_marker(tmp_path)


def test_run_dir_with_gadget_weights(tmp_path, capsys, trained_run):
    import shutil

    for i, (path, _) in enumerate(_bad_files(tmp_path / "bad", "model.safetensors")):
        run = shutil.copytree(trained_run, tmp_path / f"run{i}")
        (run / "model.safetensors").write_bytes(path.read_bytes())
        rc, _, err = run_main(["evaluate", "--run", run, "--eps", "0.1", "--steps", "1", "--samples", "6",
                               "--device", "cpu"], capsys)
        assert_clean_refusal(rc, err, "model.safetensors")
        rc, _, err = run_main(["certify", "--run", run, "--sigma", "0.25", "--eps", "0.1", "--n0", "8",
                               "--n", "50", "--samples", "3", "--noise-batch-size", "50", "--device", "cpu"], capsys)
        assert_clean_refusal(rc, err, "model.safetensors")
    _no_marker(tmp_path)


def test_end_to_end_subprocess_refusal(tmp_path):
    """One real subprocess: exit 2, one line, no traceback, no marker; --debug shows the
    traceback."""
    (tmp_path / "mymodels.py").write_text(FACTORY)
    path, _ = _bad_files(tmp_path / "bad", "w.pt")[0]
    args = ["evaluate", "--model", "mymodels:net", "--weights", path, "--data", "gauss3", "--eps", "0.1",
            "--out", tmp_path / "out", "--device", "cpu"]
    r = run_cli(args, cwd=tmp_path)
    assert r.returncode == 2
    assert_user_error(r, "refusing to unpickle")
    r = run_cli(["--debug", *args], cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr
    _no_marker(tmp_path)


def test_zzz_report_bad_files_count():
    """Printed for the closing note (run with -s to see it)."""
    print(f"\n[untrusted-files] malicious files tried: {len(BAD_FILES)}")
    assert BAD_FILES

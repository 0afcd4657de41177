"""Helpers shared by the reliability tests (untrusted files, fuzzing, kill/resume,
distributed, determinism): run the real CLI in a subprocess, build tiny runs, write
malicious pickles, and check that a directory holds no half-written file.
"""
from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for in-process runs (as OMP_NUM_THREADS=1 for the subprocesses):
    on the shared 2-core machine thread contention makes torch several times slower.
    Import this fixture into a test module to apply it there."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def gauss3_config(*, epochs: int = 1, batch_size: int = 32) -> str:
    """The TOML of the tiny run the reliability tests build on: a gauss3 MLP trained with the
    standard loss (seconds per epoch on one core)."""
    return f"""
[data]
name = "gauss3"
val_fraction = 0.1
[model]
arch = "mlp"
[train]
loss = "standard"
schedule = "constant"
epochs = {epochs}
batch_size = {batch_size}
lr = 0.05
seed = 0
"""


def train_tiny_run(d: Path) -> Path:
    """Train :func:`gauss3_config` in-process into ``d/run`` (config at ``d/c.toml``); return ``d``."""
    from abstain.cli import main

    (d / "c.toml").write_text(gauss3_config())
    assert main(["train", "--config", str(d / "c.toml"), "--out", str(d / "run"), "--device", "cpu"]) == 0
    return d


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for CLI subprocesses: one thread, quiet, CPU, our source first."""
    env = dict(os.environ)
    env.update({
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ABSTAIN_QUIET": "1",
        "CUDA_VISIBLE_DEVICES": "", "PYTHONHASHSEED": "0", "MPLBACKEND": "Agg",
        "PYTHONPATH": str(SRC) + os.pathsep + env.get("PYTHONPATH", ""),
    })
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if extra:
        env.update(extra)
    return env


def run_cli(args: Sequence[str], *, cwd: str | os.PathLike | None = None, timeout: float = 300,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m abstain ARGS`` and capture its output."""
    return subprocess.run([sys.executable, "-m", "abstain", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=cli_env(env))


def assert_user_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """A user error: non-zero exit, no traceback, a one-line message naming the problem."""
    err = r.stderr.strip()
    assert r.returncode != 0, f"expected failure, got rc=0\nstdout={r.stdout}\nstderr={r.stderr}"
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "no error message"
    msg = lines[-1]
    assert "error" in msg.lower(), msg
    low = err.lower()
    for n in needles:
        assert n.lower() in low, f"{n!r} not named in: {err}"
    return msg


def run_main(argv: Sequence[str], capsys) -> tuple[int, str, str]:
    """``abstain ARGV`` in this process (cheap: no torch import): (exit code, stdout,
    stderr). An exception escaping ``cli.main`` (which would be a traceback) fails the test
    by propagating."""
    from abstain import cli

    capsys.readouterr()
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        rc = e.code if isinstance(e.code, int) else 1
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_clean_refusal(rc: int, err: str, *needles: str) -> str:
    """Non-zero exit and a one-line error message on stderr naming ``needles``."""
    assert rc != 0, f"accepted; stderr={err}"
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.lower().startswith(("usage:", " "))]
    assert len(lines) == 1, f"expected a one-line message, got: {err!r}"
    for n in needles:
        assert n.lower() in err.lower(), f"{n!r} not named in {err!r}"
    return lines[0]


class Marker:
    """Pickles to a call of ``open(path, "w")``: unpickling it creates ``path``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class SystemMarker:
    """Pickles to ``os.system("touch path")``: a second gadget, via a module function."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


def write_raw_pickle(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)
    return path


def write_torch_pickle(path: Path, obj: Any) -> Path:
    """A ``torch.save`` zip file whose data.pkl runs the gadget when fully unpickled."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def malicious_payloads(marker: Path) -> dict[str, Any]:
    """Objects that, when unpickled without restriction, create ``marker``."""
    import torch

    import numpy as np

    obj_array = np.empty(2, dtype=object)
    obj_array[0] = Marker(marker)
    return {
        "open-gadget": {"state_dict": Marker(marker)},
        "system-gadget": {"weight": SystemMarker(marker), "bias": torch.zeros(2)},
        "object-array": {b"data": obj_array, b"labels": [0, 1], "state_dict": {"w": obj_array}},
    }


def write_fake_cifar10(root: Path, n: int = 4, seed: int = 0) -> Path:
    """A tiny CIFAR-10 tree (``root/cifar-10-batches-py``) in the distributed format:
    dicts with bytes keys, uint8 ``data`` N x 3072, ``labels`` lists (pickle protocol 4,
    whose bytes need no global)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(d / name, "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n).tolist(),
                         b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"filenames": [b"x.png"] * n}, fh, protocol=4)
    with open(d / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, fh, protocol=4)
    return d


TEMP_SUFFIXES = (".tmp",)


def check_tree_consistent(directory: Path) -> dict[str, int]:
    """Every file under ``directory`` is whole: JSON parses, CSV rows have the header's
    width, safetensors load, ``.pt`` loads with weights_only. Temporary files of
    :func:`abstain.io.atomic_write` (``.<name>.<random>.tmp``) are the only leftovers
    allowed (a SIGKILL between mkstemp and rename leaves one; readers never open them).

    Returns counts by kind for the closing report.
    """
    import torch
    from safetensors.torch import load_file

    counts = {"json": 0, "jsonl": 0, "csv": 0, "safetensors": 0, "pt": 0, "tmp": 0, "other": 0}
    for p in sorted(directory.rglob("*")):
        if not p.is_file():
            continue
        name = p.name
        if name.startswith(".") and name.endswith(".tmp"):
            counts["tmp"] += 1
            continue
        assert not name.endswith(".tmp"), f"unexpected temp file {p}"
        if name.endswith(".json"):
            json.loads(p.read_text())
            counts["json"] += 1
        elif name.endswith(".jsonl"):
            # an append-only log may lose its last line on SIGKILL only if appended
            # non-atomically; we require every line to parse.
            for line in p.read_text().splitlines():
                if line.strip():
                    json.loads(line)
            counts["jsonl"] += 1
        elif name.endswith(".csv"):
            with open(p, newline="") as fh:
                rows = list(csv.reader(fh))
            assert rows, f"empty csv {p}"
            assert all(len(r) == len(rows[0]) for r in rows), f"ragged csv {p}"
            counts["csv"] += 1
        elif name.endswith(".safetensors"):
            load_file(str(p))
            counts["safetensors"] += 1
        elif name.endswith(".pt"):
            torch.load(p, map_location="cpu", weights_only=True)
            counts["pt"] += 1
        else:
            counts["other"] += 1
    return counts


def tree_snapshot(directory: Path) -> dict[str, bytes]:
    """Relative path -> content of every file under ``directory`` (missing dir: {})."""
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


class Stop(KeyboardInterrupt):
    """The interruption :func:`interrupted_after` raises (a KeyboardInterrupt, like Ctrl-C)."""


def interrupted_after(monkeypatch, module, attr: str, calls: int) -> list:
    """Make ``module.attr`` raise :class:`Stop` at call ``calls + 1``; returns the call log."""
    real, log = getattr(module, attr), []

    def spy(*a, **k):
        log.append(a)
        if len(log) > calls:
            raise Stop
        return real(*a, **k)

    monkeypatch.setattr(module, attr, spy)
    return log


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a test's own torch.distributed rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

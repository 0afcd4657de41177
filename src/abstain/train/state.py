"""What a training run keeps on disk and in memory between batches: RNG states, the
best-so-far model, the epoch log, and the clean stop on SIGINT/SIGTERM."""
from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..checkpoint import META_FILE, load_train_state
from ..errors import AbstainError
from ..io import atomic_write_text

LOG_FILE = "log.jsonl"
STATE_VERSION = 1


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after a clean stop (SIGINT, or ``should_stop``); the checkpoint in ``out`` is
    complete."""


class TrainingDiverged(AbstainError):
    """The loss became NaN or infinite: the run stops before the next checkpoint, so the one
    on disk (if any) is the last good one."""


# --------------------------------------------------------------------------- rng states
def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):
            pass  # resumed on another number of GPUs


# --------------------------------------------------------------------------- tensors
def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def optimizer_state_to(opt: torch.optim.Optimizer, device: torch.device) -> None:
    for st in opt.state.values():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                st[k] = v.to(device)


def merge_sums(base: Mapping[str, float], sums_t: Mapping[str, torch.Tensor]) -> dict[str, float]:
    out = dict(base)
    for k, v in sums_t.items():
        out[k] = out.get(k, 0.0) + float(v)
    return out


# --------------------------------------------------------------------------- SIGINT
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    """SIGINT or SIGTERM (a scheduler's stop, ``kill``) sets a flag; the loop stops at the
    next batch boundary with a checkpoint. A second signal raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.set = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True
        print(f"\nabstain train: {signal.Signals(signum).name} received; stopping after this batch "
              "(Ctrl-C again to abort without a checkpoint)", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            if old is not None:
                signal.signal(sig, old)


# --------------------------------------------------------------------------- log
def truncate_log(path: Path, epochs_done: int) -> None:
    """Keep the log lines of the epochs a resumed run has already completed."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("epoch", 0) <= epochs_done:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    atomic_write_text(path, "".join(f"{line}\n" for line in keep))


def append_log(path: Path, record: Mapping[str, Any]) -> None:
    old = path.read_text() if path.is_file() else ""
    atomic_write_text(path, old + json.dumps(record, sort_keys=True) + "\n")


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The epoch records of a run's ``log.jsonl`` (or of a run directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / LOG_FILE
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def is_finished(out: str | os.PathLike) -> bool:
    """Whether ``out`` holds a finished training run."""
    state = load_train_state(out) if (Path(out) / META_FILE).is_file() else None
    return bool(state and state.get("finished"))

"""Atomic file writes: a temporary name in the same directory, fsync, then rename.

A reader (or a resumed run after SIGKILL) sees either the old file or the whole new
one, never a half-written file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data), "wb")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text), "w")


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if callable(getattr(obj, "to_dict", None)):      # a validated config (abstain.config.Config)
        return obj.to_dict()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=_default, allow_nan=True)
    return atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as fh:
        return json.load(fh)


def update_json(path: str | os.PathLike, key: str, value: Any) -> Path:
    """Set ``key`` in the JSON object at ``path`` (created if missing), atomically.

    Used for a run directory's ``results.json``, where train, evaluate and certify
    each own one section.
    """
    path = Path(path)
    data: dict[str, Any] = {}
    if path.is_file():
        data = read_json(path)
        if not isinstance(data, dict):
            data = {}
    data[key] = value
    return atomic_write_json(path, data)

"""Finished chunks of a long job, kept so that a rerun continues where a kill stopped it.

``abstain evaluate`` and ``abstain certify`` cut their inputs into chunks and write each
chunk's per-sample record columns, atomically, as one ``.npz`` file under the output's work
area (``OUT/.abstain-work/<job>-<key>/``). The key hashes everything the records depend on
(settings, the model's weights, the data and the subset), so a rerun of the same command
skips the finished chunks, and a changed command or a retrained model never reuses them.
The final records are the merged chunks, byte for byte the records of an uninterrupted run.

``.npz`` is read with ``allow_pickle=False``: string columns are stored as fixed-width
unicode and turned back into the object columns the record writer was given.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from .io import atomic_write_bytes

_ORDER = "__columns__"
_OBJECT = "__object_columns__"


def model_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().reshape(-1).contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def job_key(**parts: Any) -> str:
    """A short hash of everything a job's records depend on (JSON-serialisable parts)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def index_digest(index: torch.Tensor | np.ndarray | None) -> str:
    if index is None:
        return "all"
    return hashlib.sha256(np.ascontiguousarray(np.asarray(index, dtype=np.int64)).tobytes()).hexdigest()[:16]


class ChunkStore:
    """The finished chunks of one job, in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def path(self, k: int, kind: str = "npz") -> Path:
        return self.dir / f"chunk-{k:06d}.{kind}"

    def done(self, k: int) -> bool:
        return self.path(k).is_file()

    def finished(self, n_chunks: int) -> set[int]:
        """The chunk ids already written (read once, so every rank decides alike)."""
        return {k for k in range(n_chunks) if self.done(k)}

    def save(self, k: int, columns: Mapping[str, Any]) -> None:
        arrays: dict[str, np.ndarray] = {}
        objects = []
        for name, v in columns.items():
            a = np.asarray(v)
            if a.dtype == object:
                a, _ = a.astype(str), objects.append(name)
            arrays[name] = a
        arrays[_ORDER] = np.array(list(columns), dtype=str)
        arrays[_OBJECT] = np.array(objects, dtype=str)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(self.path(k), buf.getvalue())

    def load(self, k: int) -> dict[str, np.ndarray]:
        with np.load(self.path(k), allow_pickle=False) as z:
            objects = set(z[_OBJECT].tolist())
            return {name: (z[name].astype(object) if name in objects else z[name]) for name in z[_ORDER].tolist()}

    def merge(self, chunks: Iterable[int], index_key: str = "index") -> dict[str, np.ndarray]:
        """The columns of ``chunks`` concatenated and sorted by ``index_key`` (stable), as
        :func:`abstain.distributed.gather_columns` orders the records of one run."""
        parts = [self.load(k) for k in chunks]
        cols = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        order = np.argsort(cols[index_key], kind="stable")
        return {k: v[order] for k, v in cols.items()}

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            self.dir.parent.rmdir()      # the work area, when no other job is in it
        except OSError:
            pass


__all__ = ["ChunkStore", "model_digest", "job_key", "index_digest"]

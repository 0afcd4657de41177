"""Long jobs in resumable chunks: :class:`ChunkedJob` (plan, compute one chunk → columns,
merge), sharded over torchrun ranks, and :class:`ChunkStore`, the finished chunks kept so
that a rerun continues where a kill stopped it.

``abstain evaluate``, ``abstain certify`` and ``abstain abstain`` cut their inputs into chunks and write each
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
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from . import distributed
from .errors import AbstainError, InputError
from .io import atomic_write_bytes
from .safefiles import read_regular
from .utils import progress

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


_META = "__chunk__"
MAX_CHUNK_BYTES = 1 << 31     # 2 GiB: far above any chunk this project writes


class ChunkError(AbstainError):
    """A chunk file that is unreadable, not a regular file, or not this chunk of this job."""


def columns_checksum(columns: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the columns' names, dtypes, shapes and bytes, in their order."""
    h = hashlib.sha256()
    for name, a in columns.items():
        a = np.ascontiguousarray(a)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def read_regular_file(path: Path, max_bytes: int = MAX_CHUNK_BYTES) -> bytes:
    """The bytes of ``path`` if it is a regular file (never through a link, never blocking
    on a FIFO) of at most ``max_bytes`` (:func:`abstain.safefiles.read_regular`); else
    raises :class:`ChunkError`."""
    return read_regular(path, max_bytes, ChunkError)


class ChunkStore:
    """The finished chunks of one job, in ``directory``.

    Every chunk file carries its identity: the job ``key`` (a hash of the model's weights,
    the data, the settings and the seed, :func:`job_key`), its chunk number, its index
    range, its row count and a checksum of its columns. ``index_of(k)`` gives the sample
    indices chunk ``k`` must hold (its ``index`` column). A chunk is reused only if it is a
    regular file (never through a link) and all of these match; any other is recomputed,
    with a one-line notice on stderr."""

    def __init__(self, directory: Path, key: str, index_of: Callable[[int], Any]) -> None:
        self.dir = Path(directory)
        self.key = str(key)
        self.index_of = index_of

    def path(self, k: int, kind: str = "npz") -> Path:
        return self.dir / f"chunk-{k:06d}.{kind}"

    def _expected(self, k: int) -> np.ndarray:
        return np.asarray(self.index_of(k), dtype=np.int64).reshape(-1)

    def _identity(self, k: int, columns: Mapping[str, np.ndarray]) -> dict[str, Any]:
        index = self._expected(k)
        return {"key": self.key, "chunk": int(k), "rows": int(len(index)),
                "range": [int(index[0]), int(index[-1]) + 1] if len(index) else [0, 0],
                "index": index_digest(index), "checksum": columns_checksum(columns)}

    def companion(self, k: int, kind: str) -> bytes:
        """The bytes of chunk ``k``'s companion file ``kind`` (e.g. its adversarial inputs),
        read as a regular file; its SHA-256 must be the one chunk ``k`` recorded."""
        meta, raw, _ = self._read(k)
        self._check(k, meta, raw)
        data = read_regular_file(self.path(k, kind))
        if meta.get("files", {}).get(kind) != hashlib.sha256(data).hexdigest():
            raise ChunkError(f"chunk {k}'s {kind} file does not match its checksum")
        return data

    def done(self, k: int) -> bool:
        """Whether chunk ``k`` is on disk, readable and this job's chunk ``k``."""
        try:
            self.load(k)
        except ChunkError:
            return False
        return True

    def finished(self, n_chunks: int) -> set[int]:
        """The chunk ids already written and valid (read once, so every rank decides alike).
        A chunk file that exists but is not valid is named in a one-line notice and will be
        recomputed (its path is cleared so that the new chunk can be written there)."""
        done = set()
        for k in range(n_chunks):
            p = self.path(k)
            if not os.path.lexists(p):
                continue
            try:
                self.load(k)
                done.add(k)
            except ChunkError as e:
                print(f"notice: recomputing chunk {k} ({p.name}: {e})", file=sys.stderr)
                self._clear(p)
        return done

    @staticmethod
    def _clear(p: Path) -> None:
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError:
            pass           # a rank that lost the race, or a read-only area: the write will say

    def save(self, k: int, columns: Mapping[str, Any], companions: Iterable[str] = ()) -> None:
        """Write chunk ``k``'s columns with its identity, atomically; the SHA-256 of each
        companion file (``path(k, kind)``, written before) goes into the identity."""
        arrays: dict[str, np.ndarray] = {}
        objects = []
        for name, v in columns.items():
            a = np.asarray(v)
            if a.dtype == object:
                a, _ = a.astype(str), objects.append(name)
            arrays[name] = a
        if "index" in arrays and not np.array_equal(np.asarray(arrays["index"], dtype=np.int64),
                                                    self._expected(k)):
            raise RuntimeError(f"chunk {k} holds other samples than its index range")   # a bug, not a user error
        ident = self._identity(k, arrays)
        ident["files"] = {kind: hashlib.sha256(read_regular_file(self.path(k, kind))).hexdigest()
                          for kind in companions}
        arrays[_ORDER] = np.array(list(columns), dtype=str)
        arrays[_OBJECT] = np.array(objects, dtype=str)
        arrays[_META] = np.array(json.dumps(ident, sort_keys=True))
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(self.path(k), buf.getvalue())

    def load(self, k: int) -> dict[str, np.ndarray]:
        """Chunk ``k``'s columns; raises :class:`ChunkError` unless the file is a regular file
        holding this job's chunk ``k`` with its rows, index range and checksum (and its
        companion files with theirs)."""
        meta, raw, objects = self._read(k)
        self._check(k, meta, raw)
        return {name: (a.astype(object) if name in objects else a) for name, a in raw.items()}

    def _check(self, k: int, meta: dict[str, Any], raw: dict[str, np.ndarray]) -> None:
        want = self._identity(k, raw)
        for field in ("key", "chunk", "rows", "range", "index", "checksum"):
            if meta.get(field) != want[field]:
                if field == "chunk":
                    raise ChunkError(f"it holds chunk {str(meta.get(field))[:20]}, not chunk {k}")
                raise ChunkError(f"its {field} does not match this job's chunk {k}")
        if "index" in raw and not np.array_equal(raw["index"].astype(np.int64), self._expected(k)):
            raise ChunkError(f"its index column does not match this job's chunk {k}")
        if any(a.ndim == 0 or len(a) != want["rows"] for a in raw.values()):
            raise ChunkError("its columns do not have its row count")
        files = meta.get("files", {})
        if not isinstance(files, dict):
            raise ChunkError("its companion files are malformed")
        for kind, digest in files.items():
            if hashlib.sha256(read_regular_file(self.path(k, str(kind)))).hexdigest() != digest:
                raise ChunkError(f"its {kind} file does not match its checksum")

    def _read(self, k: int) -> tuple[dict[str, Any], dict[str, np.ndarray], set[str]]:
        data = read_regular_file(self.path(k))
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                meta = json.loads(str(z[_META][()]))
                order = [str(n) for n in z[_ORDER].tolist()]
                objects = set(z[_OBJECT].tolist())
                raw = {name: z[name] for name in order}
        except Exception as e:       # truncated, empty, random bytes, not npz, missing keys
            raise ChunkError(f"unreadable: {type(e).__name__}") from None
        if not isinstance(meta, dict):
            raise ChunkError("no identity")
        return meta, raw, objects

    def merge(self, chunks: Iterable[int], index_key: str = "index") -> dict[str, np.ndarray]:
        """The columns of ``chunks`` concatenated and sorted by ``index_key`` (stable), as
        :func:`abstain.distributed.gather_columns` orders the records of one run. A chunk
        that no longer validates here (changed since :meth:`finished`) raises
        :class:`ChunkError`."""
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


Compute = Callable[[int, torch.Tensor], Mapping[str, Any]]


class ChunkedJob:
    """A computation over ``rows`` rows in chunks of ``chunk``: :meth:`run` calls
    ``compute(k, positions)`` (positions ``k·chunk …`` into the rows; it returns chunk ``k``'s
    per-sample record columns) for the chunks this rank owns and returns the merged columns
    sorted by ``index``.

    This is the one place where work is sharded: under torchrun rank r computes chunks
    ``r, r + world, …`` (:func:`abstain.distributed.shard_indices`), and science code only
    returns columns. With a ``store`` (:class:`ChunkStore`) every finished chunk is written
    to disk with its identity, a rerun skips the chunks already there and valid, and rank 0
    merges them after a barrier (a shared filesystem, as for the checkpoints); the other
    ranks get None. Without one the chunks stay in memory and are gathered on every rank.
    A user error (:class:`abstain.errors.AbstainError`) in a chunk removes the store: a rerun
    would fail alike. ``desc``: the progress bar's label (None: no bar)."""

    def __init__(self, rows: int, chunk: int, *, store: "ChunkStore | None" = None,
                 desc: str | None = None) -> None:
        if rows < 1:
            raise InputError("the job has no inputs")
        self.rows, self.chunk = int(rows), max(1, int(chunk))
        self.n_chunks = -(-self.rows // self.chunk)
        self.store, self.desc = store, desc

    def positions(self, k: int) -> torch.Tensor:
        """The rows of chunk ``k``."""
        return torch.arange(k * self.chunk, min((k + 1) * self.chunk, self.rows))

    def run(self, compute: Compute, companions: Iterable[str] = ()) -> dict[str, np.ndarray] | None:
        done = self.store.finished(self.n_chunks) if self.store is not None else set()
        mine = [k for k in distributed.shard_indices(self.n_chunks).tolist() if k not in done]
        bar = None
        if self.desc is not None:
            bar = progress(total=self.rows, initial=sum(len(self.positions(k)) for k in done),
                           desc=self.desc, disable=None if distributed.is_main() else True)
        parts: list[dict[str, np.ndarray]] = []
        try:
            for k in mine:
                cols = {name: _numpy(v) for name, v in compute(k, self.positions(k)).items()}
                if self.store is not None:
                    self.store.save(k, cols, companions=companions)
                else:
                    parts.append(cols)
                if bar is not None:
                    bar.update(len(self.positions(k)))
        except AbstainError:
            if self.store is not None:
                self.store.remove()
            raise
        finally:
            if bar is not None:
                bar.close()
        if self.store is not None:
            distributed.barrier()
            return self.store.merge(range(self.n_chunks)) if distributed.is_main() else None
        names = _column_names(parts)
        local = ({n: np.concatenate([p[n] for p in parts]) for n in names} if parts
                 else {n: np.zeros(0, dtype=names[n]) for n in names})
        return distributed.gather_columns(local)


def _numpy(v: Any) -> np.ndarray:
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


def _column_names(parts: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Column name -> dtype, agreed by every rank (a rank without chunks learns them from
    the others, so that the gather has the same keys everywhere)."""
    mine = {n: a.dtype.str if a.dtype != object else "O" for n, a in parts[0].items()} if parts else None
    if not distributed.is_distributed():
        return {n: np.dtype(d) for n, d in (mine or {"index": "<i8"}).items()}
    boxes: list[Any] = [None] * distributed.world_size()
    torch.distributed.all_gather_object(boxes, mine)
    agreed = next((b for b in boxes if b is not None), {"index": "<i8"})
    return {n: np.dtype(d) for n, d in agreed.items()}


__all__ = ["ChunkedJob", "ChunkStore", "ChunkError", "columns_checksum", "read_regular_file", "model_digest", "job_key",
           "index_digest"]

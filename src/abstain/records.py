"""Per-sample records: one row per test sample, written as CSV (atomic).

Every reported number is recomputed from these files (DESIGN.md). Columns are
named in the paper's terms, e.g. ``index, label, pred, robust@0.1, robust@0.2``.
Booleans are stored as 0/1, floats with full precision (``repr``).
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .errors import DataError, InputError
from .io import atomic_write_text


def _column(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise InputError(f"a record column must be 1-D, got shape {arr.shape}")
    return arr


def write_records(path: str | os.PathLike, columns: Mapping[str, Any]) -> Path:
    """Write ``columns`` (name -> 1-D array, all the same length) as CSV, atomically."""
    cols = {k: _column(v) for k, v in columns.items()}
    lengths = {len(v) for v in cols.values()}
    if len(lengths) > 1:
        raise InputError(f"record columns differ in length: { {k: len(v) for k, v in cols.items()} }")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(cols))
    n = lengths.pop() if lengths else 0

    def fmt(v: Any) -> str:
        if isinstance(v, (bool, np.bool_)):
            return "1" if v else "0"
        if isinstance(v, (float, np.floating)):
            return repr(float(v))
        return str(v)

    arrays = list(cols.values())
    for i in range(n):
        writer.writerow([fmt(a[i]) for a in arrays])
    return atomic_write_text(path, buf.getvalue())


def read_records(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a records CSV back into columns (int, float or str arrays)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing records file {path}")
    try:
        with open(path, newline="") as fh:
            text = fh.read()
    except UnicodeDecodeError:
        raise DataError(f"corrupt records file {path}: not UTF-8 text") from None
    if not text:
        raise DataError(f"empty records file {path}")
    if not text.endswith("\n"):  # write_records ends every row with a newline
        raise DataError(f"truncated records file {path} (no newline after the last row)")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header, body = rows[0], rows[1:]
    if any(len(r) != len(header) for r in body):
        raise DataError(f"truncated or corrupt records file {path}")
    out: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        raw = [r[j] for r in body]
        for cast in (np.int64, np.float64):
            try:
                out[name] = np.asarray(raw, dtype=cast) if raw else np.zeros(0, dtype=cast)
                break
            except ValueError:
                continue
        else:
            out[name] = np.asarray(raw, dtype=object)
    return out

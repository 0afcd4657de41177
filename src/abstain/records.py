"""Per-sample records: one row per test sample, written as CSV (atomic), and their schema.

Every reported number is recomputed from these files (DESIGN.md). Columns are named in the
paper's terms, e.g. ``index, label, pred, robust@0.1, robust@0.2``. Booleans are stored as
0/1, floats with full precision (``repr``).

The schema. ``index`` (position in the evaluated split), ``label``, ``pred``; a flag per
radius named ``<kind>@<ε>`` with ε printed by ``%g``: ``robust@ε`` (the prediction cannot be
changed in the ε-ball, found by an attack), ``certified@ε`` (randomized smoothing certifies
radius ≥ ε), ``selected@ε``. A prefix ``<model>.`` names another model's columns in the
same file (``core.robust@0.1``). Such names are built by :func:`column` and read back by
:func:`parse_column` / :func:`radii` / :func:`flag` only.
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


ROBUST, CERTIFIED, SELECTED = "robust", "certified", "selected"


def eps_text(eps: float) -> str:
    """ε as it appears in column names (``%g``: 0.1, 0.00392157)."""
    return f"{eps:g}"


def column(kind: str, eps: float, prefix: str = "") -> str:
    """The name of the ``kind`` flag at radius ``eps``: ``robust@0.1``, ``core.robust@0.1``."""
    return f"{prefix + '.' if prefix else ''}{kind}@{eps_text(eps)}"


def parse_column(name: str) -> tuple[str, str, float] | None:
    """``[prefix.]kind@eps`` -> (prefix, kind, eps); None for a column without a radius."""
    head, sep, tail = name.rpartition("@")
    if not sep:
        return None
    try:
        eps = float(tail)
    except ValueError:
        return None
    prefix, _, kind = head.rpartition(".")
    return prefix, kind, eps


def radii(cols: Mapping[str, Any], kind: str = ROBUST, prefix: str = "") -> list[float]:
    """The radii of the ``[prefix.]kind@ε`` columns of a records table, ascending."""
    out = []
    for name in cols:
        parsed = parse_column(name)
        if parsed is not None and parsed[0] == prefix and parsed[1] == kind:
            out.append(parsed[2])
    return sorted(out)


def flag(cols: Mapping[str, Any], kind: str, eps: float, prefix: str = "") -> np.ndarray:
    """The boolean ``[prefix.]kind@ε`` column. ε is matched to 1e-5 relative, since names
    carry it printed with %g (6 significant digits; e.g. 1/255 -> 0.00392157)."""
    for e in radii(cols, kind, prefix):
        if abs(e - eps) <= 1e-5 * max(abs(eps), 1e-12):
            return np.asarray(cols[column(kind, e, prefix)]).astype(bool)
    have = [k for k in cols if parse_column(k) is not None]
    raise KeyError(f"records lack column {column(kind, eps, prefix)!r}; have {sorted(have)}")


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
from .authors_records import read_authors_csv  # noqa: E402

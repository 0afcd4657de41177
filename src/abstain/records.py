"""Per-sample records: the :class:`Records` table at the centre of every result, its column
schema, every metric computed from it, and its files (CSV, atomic; npz).

Every reported number is recomputed from records (DESIGN.md). Columns are named in the
paper's terms, e.g. ``index, label, pred, robust@0.1, robust@0.2``. Booleans are stored as
0/1, floats with full precision (``repr``).

The schema. ``index`` (the sample's id: its position in the evaluated split, the key that
aligns records of several models), ``label``, ``pred``; a flag per radius named
``<kind>@<ε>`` with ε printed by ``%g``: ``robust@ε`` (the prediction cannot be changed in
the ε-ball, found by an attack), ``certified@ε`` (randomized smoothing certifies radius
≥ ε), ``selected@ε``. A prefix ``<model>.`` names another model's columns in the same table
(``core.robust@0.1``). Such names are built by :func:`column` and read back by
:func:`parse_column` / :func:`radii` / :func:`flag` only; nothing else formats them.

The metrics (:class:`Records` methods, each one implementation in :mod:`abstain.metrics`):
the robustness–accuracy partition (eq. 1–3), the indicator abstain models S_ERI / S_CRI
(eq. 12, 13) with robust selection (eq. 14: the flag at 2ε), and the 2-compositional model
with a core (eq. 15).

This module uses numpy only (tensors are accepted as columns by duck typing).
"""
from __future__ import annotations

import csv
import io
import os
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .errors import DataError, InputError
from .io import atomic_write_bytes, atomic_write_text
from . import metrics as _metrics


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
    if hasattr(values, "detach") and hasattr(values, "cpu"):      # a torch tensor
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


# --------------------------------------------------------------------------- radius-keyed dicts
def _as_radius(key: Any) -> float | None:
    if isinstance(key, bool):
        return None
    if isinstance(key, (int, float, np.integer, np.floating)):
        return float(key)
    if isinstance(key, str):
        try:
            return float(key)
        except ValueError:
            return None
    return None


class RadiusDict(dict):
    """A dict keyed by radius. Keys are stored as the ``%g`` text of the column names
    (``"0.00784314"``; what ``results.json`` holds) and looked up by that text or by the float
    itself, matched to 1e-5 relative: ``d[2/255] is d["0.00784314"]``."""

    def _key(self, key: Any) -> Any:
        if dict.__contains__(self, key):
            return key
        eps = _as_radius(key)
        if eps is not None:
            for k in dict.keys(self):
                e = _as_radius(k)
                if e is not None and abs(e - eps) <= 1e-5 * max(abs(eps), 1e-12):
                    return k
        return key

    def __getitem__(self, key: Any) -> Any:
        return dict.__getitem__(self, self._key(key))

    def __contains__(self, key: Any) -> bool:
        return dict.__contains__(self, self._key(key))

    def get(self, key: Any, default: Any = None) -> Any:
        return dict.get(self, self._key(key), default)

    def __setitem__(self, key: Any, value: Any) -> None:
        eps = _as_radius(key)
        dict.__setitem__(self, eps_text(eps) if eps is not None and not isinstance(key, str) else key, value)


# --------------------------------------------------------------------------- the table
class Records(Mapping[str, np.ndarray]):
    """A table of per-sample records: name -> 1-D numpy column, all of one length, one row
    per sample (``index`` = the sample's id), plus a ``summary`` of metrics computed from it.

    A mapping of its columns (``rec["robust@0.1"]``, ``list(rec)``); a key that is not a
    column is looked up in ``summary`` (``rec["partition"]`` is ``rec.summary["partition"]``,
    a :class:`RadiusDict`). Every metric is a method, so no caller names a column.
    """

    def __init__(self, columns: Mapping[str, Any], summary: Mapping[str, Any] | None = None) -> None:
        cols = {str(k): _column(v) for k, v in columns.items()}
        lengths = {len(v) for v in cols.values()}
        if len(lengths) > 1:
            raise InputError(f"record columns differ in length: { {k: len(v) for k, v in cols.items()} }")
        self._cols = cols
        self.summary: dict[str, Any] = dict(summary or {})

    # -- mapping ------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        if name in self._cols:
            return self._cols[name]
        if name in self.summary:
            return self.summary[name]
        raise KeyError(f"records lack column {name!r}; have {sorted(self._cols)}")

    def __contains__(self, name: object) -> bool:
        return name in self._cols or name in self.summary

    def __iter__(self) -> Iterator[str]:
        return iter(self._cols)

    def __len__(self) -> int:
        return len(self._cols)

    def __repr__(self) -> str:
        return f"Records({self.rows} rows; columns {', '.join(self._cols)})"

    @property
    def columns(self) -> dict[str, np.ndarray]:
        """The columns as a plain dict (a copy of the mapping, sharing the arrays)."""
        return dict(self._cols)

    @property
    def rows(self) -> int:
        return len(next(iter(self._cols.values()))) if self._cols else 0

    @property
    def index(self) -> np.ndarray:
        return np.asarray(self["index"], dtype=np.int64)

    @property
    def label(self) -> np.ndarray:
        return np.asarray(self["label"], dtype=np.int64)

    def pred(self, prefix: str = "") -> np.ndarray:
        """``[prefix.]pred``: the model's clean prediction."""
        return np.asarray(self[f"{prefix}.pred" if prefix else "pred"], dtype=np.int64)

    # -- the schema ---------------------------------------------------------------------
    def flag(self, kind: str, eps: float, prefix: str = "") -> np.ndarray:
        """The boolean ``[prefix.]kind@ε`` column (:func:`flag`)."""
        return flag(self._cols, kind, eps, prefix)

    def has(self, kind: str, eps: float, prefix: str = "") -> bool:
        try:
            self.flag(kind, eps, prefix)
        except KeyError:
            return False
        return True

    def radii(self, kind: str = ROBUST, prefix: str = "") -> list[float]:
        return radii(self._cols, kind, prefix)

    def with_columns(self, columns: Mapping[str, Any], summary: Mapping[str, Any] | None = None) -> "Records":
        """A new table with ``columns`` added (or replaced) and ``summary`` merged in."""
        return Records({**self._cols, **dict(columns)}, {**self.summary, **dict(summary or {})})

    def with_flags(self, kind: str, flags: Mapping[float, Any], prefix: str = "") -> "Records":
        """A new table with a ``[prefix.]kind@ε`` column per ``{ε: values}``."""
        return self.with_columns({column(kind, e, prefix): np.asarray(v, dtype=bool) for e, v in flags.items()})

    # -- alignment by sample id -----------------------------------------------------------
    def aligned_to(self, ids: Any) -> "Records":
        """The rows of the samples ``ids`` (the ``index`` of another table), in that order.
        Raises :class:`DataError` when a sample is missing or an id repeats."""
        ids = np.asarray(ids.index if isinstance(ids, Records) else ids, dtype=np.int64)
        own = self.index
        if len(np.unique(own)) != len(own):
            raise DataError("records hold a sample index more than once")
        order = np.argsort(own, kind="stable")
        pos = np.searchsorted(own[order], ids)
        pos = np.clip(pos, 0, max(len(own) - 1, 0))
        if len(own) == 0 or not np.array_equal(own[order][pos], ids):
            raise DataError("records cover other samples than the table they are aligned to")
        take = order[pos]
        return Records({k: v[take] for k, v in self._cols.items()}, self.summary)

    def sorted(self) -> "Records":
        """The rows in increasing ``index``."""
        order = np.argsort(self.index, kind="stable")
        return Records({k: v[order] for k, v in self._cols.items()}, self.summary)

    def join(self, other: "Records", prefix: str) -> "Records":
        """This table with ``other``'s model columns (``pred`` and the flags) under
        ``prefix.``, aligned by sample id (the labels must agree)."""
        o = other.aligned_to(self.index)
        if "label" in self._cols and "label" in o and not np.array_equal(self.label, o.label):
            raise DataError(f"records joined as {prefix!r} hold other labels for the same samples")
        add = {f"{prefix}.{k}": v for k, v in o._cols.items()
               if k == "pred" or (parse_column(k) is not None and parse_column(k)[0] == "")}
        return self.with_columns(add)

    # -- metrics --------------------------------------------------------------------------
    def partition(self, eps: float, kind: str = ROBUST, prefix: str = "") -> dict[str, float]:
        """The robustness–accuracy partition at ``eps`` (eq. 1–3; :func:`abstain.metrics.partition`)
        of model ``prefix`` (``kind``: ``robust`` empirical, ``certified`` by smoothing)."""
        return _metrics.partition(self.label, self.pred(prefix), self.flag(kind, eps, prefix))

    def partitions(self, kind: str = ROBUST, prefix: str = "") -> RadiusDict:
        """:meth:`partition` at every radius of the table, keyed by radius."""
        out = RadiusDict()
        for e in self.radii(kind, prefix):
            out[e] = self.partition(e, kind, prefix)
        return out

    def indicator(self, eps: float, kind: str = ROBUST, prefix: str = "",
                  sound: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(S(x), robust selection) of the indicator selector at ``eps``: S_ERI (eq. 12,
        ``kind="robust"``) or S_CRI (eq. 13, ``kind="certified"``): S(x) = the flag at ε;
        robust selection (eq. 14) = the flag at ε and at 2ε (S(x') = 1 for every x' in the
        ε-ball needs the model constant on the 2ε-ball). ``sound=False``: the authors' count,
        robust selection = S(x) (no 2ε check)."""
        sel = self.flag(kind, eps, prefix)
        return sel, (sel & self.flag(kind, 2 * eps, prefix)) if sound else sel.copy()

    def indicator_metrics(self, eps: float, kind: str = ROBUST, prefix: str = "",
                          sound: bool = True) -> dict[str, float]:
        """:func:`abstain.metrics.abstain_metrics` of (F, S_ERI) or (G, S_CRI) at ``eps``
        (:meth:`indicator`)."""
        sel, rsel = self.indicator(eps, kind, prefix, sound)
        return _metrics.abstain_metrics(self.label, self.pred(prefix), sel, rsel, self.flag(kind, eps, prefix))

    def composition(self, core: "Records | str", eps: float, *, selected: Any = None,
                    robust_selected: Any = None, robust_abstained: Any = None, robust: Any = None,
                    kind: str = ROBUST) -> dict[str, float]:
        """The 2-compositional model (eq. 15) of this table's model (with S_ERI at ``eps``
        unless ``selected``/``robust_selected`` are given) and ``core``: another table
        (aligned by sample id) or the prefix of the core's columns in this one.

        Returns the sound ``nat_acc``, ``rob_acc`` and ``coverage``
        (:func:`abstain.metrics.composition_metrics`), the authors' count
        ``rob_acc_paper`` (:func:`abstain.metrics.paper_robust_accurate`, for comparison
        only) and the core alone, ``core_nat_acc`` / ``core_rob_acc``."""
        if isinstance(core, Records):
            c = core.aligned_to(self.index)
            core_pred, core_rob = c.pred(), c.flag(kind, eps)
        else:
            core_pred, core_rob = self.pred(core), self.flag(kind, eps, core)
        if selected is None:
            selected, robust_selected = self.indicator(eps, kind)
        rob = self.flag(kind, eps) if robust is None else np.asarray(robust, dtype=bool)
        y, pred = self.label, self.pred()
        out = _metrics.composition_metrics(y, selected, robust_selected, pred, rob, core_pred, core_rob,
                                           robust_abstained)
        stage = {"pred": pred, "robust": rob, "selected": selected, "robust_selected": robust_selected}
        out["rob_acc_paper"] = float(_metrics.paper_robust_accurate(y, [stage], core_pred, core_rob).mean())
        out["core_nat_acc"] = float(np.mean(core_pred == y))
        out["core_rob_acc"] = float(np.mean((core_pred == y) & core_rob))
        return out

    # -- files ----------------------------------------------------------------------------
    def write_csv(self, path: str | os.PathLike) -> Path:
        """The columns as CSV, atomically (:func:`write_records`)."""
        return write_records(path, self._cols)

    @classmethod
    def read_csv(cls, path: str | os.PathLike) -> "Records":
        return cls(read_records(path))

    def write_npz(self, path: str | os.PathLike) -> Path:
        """The columns as an uncompressed ``.npz`` (no pickled objects), atomically."""
        buf = io.BytesIO()
        cols = {k: (v.astype(str) if v.dtype == object else v) for k, v in self._cols.items()}
        np.savez(buf, **cols)
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def read_npz(cls, path: str | os.PathLike) -> "Records":
        """Columns from :meth:`write_npz` (read with ``allow_pickle=False``)."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"missing records file {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls({k: z[k] for k in z.files})
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
            raise DataError(f"corrupt records file {path}: {type(e).__name__}") from None


def as_records(columns: Mapping[str, Any] | Records) -> Records:
    """``columns`` as a :class:`Records` (itself when it is one)."""
    return columns if isinstance(columns, Records) else Records(columns)


def mean_over(tables: Sequence[Records], metric: str, *args: Any, **kw: Any) -> dict[str, float]:
    """``metric`` (a :class:`Records` method name) of every table, as mean and ``_std``
    (:func:`abstain.metrics.mean_std`; one table per seed)."""
    return _metrics.mean_std([getattr(t, metric)(*args, **kw) for t in tables])


from .authors_records import read_authors_csv  # noqa: E402, F401  (re-exported: the authors' files)

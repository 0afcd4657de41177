"""Reader for the per-sample records the paper's authors published (``ymerkli/robust-abstain``).

Their repository ships, beside most models of the paper, the per-sample evaluation of the
model on the test set, under ``robustabstain/models/<family>/<dataset>/…/<run>/``:

``testset_<dataset>_<norm>_<attack>.csv`` (empirical robustness; ``attack`` is ``apgd``,
``apgdconf`` or ``pgd``): an unnamed pandas index column, ``sample_idx`` and per model
``<model>_is_acc`` (0/1), ``<model>_pred`` (class), ``<model>_is_rob<k>_255`` (0/1: the
attack found no other class in the ℓ∞ ball of radius k/255, i.e. robustness of the
prediction, eq. 2/3), optionally ``<model>_adv_conf<k>_255`` / ``<model>_nat_conf``
(APGDconf confidences), ``<model>_is_cert<k>_255``, ``<model>_is_select``,
``<model>_select_rob``, ``<model>_select_cert`` (ACE selection networks).

``smoothing/testset_smooth<σ>_N0<n0>_N<n>.csv`` (randomized smoothing, Cohen et al.):
``sample_idx``, ``label``, ``base_prediction``, ``prediction`` (-1: the smoothed classifier
abstains), ``l2_radius``, ``linf_radius`` (certified radii).

The ℓ∞ files carry no label: only whether each prediction is correct. :func:`infer_labels`
recovers the label from several files of the same test set (the prediction of any model
that is accurate there) and gives the remaining samples a class no model predicts, which is
all :mod:`abstain.metrics` needs (it only compares labels with predictions).

The format is documented in ``docs/paper-records.md``. Every malformed file raises one
:class:`~abstain.errors.DataError` naming the file and the problem.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from .errors import DataError
from .safefiles import check_regular

DATASETS = ("cifar10", "cifar100", "mtsd_l", "sbb_l", "mtsd", "sbb")

_EMPIRICAL_NAME = re.compile(
    r"^(?P<split>[A-Za-z]+)_(?P<dataset>[A-Za-z0-9_]+?)_(?P<norm>Linf|L2|L1)_(?P<attack>[A-Za-z0-9]+)\.csv$")
_SMOOTHING_NAME = re.compile(
    r"^(?P<split>[A-Za-z]+)_smooth(?P<sigma>\d+(?:\.\d+)?)_N0(?P<n0>\d+)_N(?P<n>\d+)\.csv$")
_COLUMN = re.compile(
    r"^(?P<model>.+?)_(?P<kind>is_acc|pred|nat_conf|is_select|select_cert|select_rob|"
    r"(?P<flag>is_rob|is_cert|adv_conf)(?P<num>\d+(?:\.\d+)?)_(?P<den>\d+))$")
_SMOOTHING_COLUMNS = ("sample_idx", "label", "prediction")
_TRUE = {"1", "1.0", "true", "True"}
MAX_BYTES = 256 * 2**20      # the authors' largest files (MTSD test sets) are a few MB
_MAX_INT = 2**53             # integers a float holds exactly (pandas may write 3.0 for 3)
_FALSE = {"0", "0.0", "false", "False"}


@dataclass(frozen=True)
class ModelRecords:
    """The per-sample columns of one model in an authors' records file (row order of the file)."""

    name: str
    is_acc: np.ndarray                                       # bool: F(x) = y
    pred: np.ndarray                                         # int64: F(x) (-1: smoothing abstains)
    robust: Mapping[float, np.ndarray] = field(default_factory=dict)     # ε -> is_rob (bool)
    certified: Mapping[float, np.ndarray] = field(default_factory=dict)  # ε -> is_cert (bool)
    adv_conf: Mapping[float, np.ndarray] = field(default_factory=dict)   # ε -> APGDconf confidence
    extra: Mapping[str, np.ndarray] = field(default_factory=dict)        # nat_conf, is_select, ...

    @property
    def eps(self) -> list[float]:
        """The radii of the robustness flags, ascending."""
        return sorted(self.robust)

    def robust_at(self, eps: float) -> np.ndarray | None:
        """The robustness flag at ``eps`` (matched to 1e-6 relative), or None when absent."""
        return _at(self.robust, eps)


@dataclass(frozen=True)
class AuthorsRecords:
    """One authors' records file: its identity (parsed from the path) and its columns."""

    path: Path
    dataset: str | None          # cifar10, cifar100, mtsd_l, sbb_l (None if the path does not say)
    split: str                   # "testset"
    attack: str                  # apgd, apgdconf, pgd, smoothing
    norm: str | None             # "Linf" (None for smoothing: radii for both norms)
    sigma: float | None          # smoothing noise level
    sample_idx: np.ndarray       # int64, unique
    models: Mapping[str, ModelRecords]
    label: np.ndarray | None = None                          # smoothing files only
    radius: Mapping[str, np.ndarray] = field(default_factory=dict)  # "l2"/"linf" -> radius

    @property
    def model(self) -> ModelRecords:
        """The single model of the file (DataError when it holds several)."""
        if len(self.models) != 1:
            raise DataError(f"{self.path}: holds {len(self.models)} models ({', '.join(self.models)}), "
                            "name the one to use")
        return next(iter(self.models.values()))

    @property
    def run(self) -> str:
        """The run directory holding the file (``…/<run>/smoothing/…`` for smoothing files)."""
        parent = self.path.parent
        return parent.parent.name if parent.name == "smoothing" else parent.name

    def certified_at(self, eps: float, norm: str = "l2") -> np.ndarray:
        """Smoothing files: the smoothed classifier does not abstain and its certified radius
        is at least ``eps`` (Cohen et al.; the prediction is constant in the ball)."""
        if norm not in self.radius:
            raise DataError(f"{self.path}: no {norm} radius column (have {sorted(self.radius) or 'none'})")
        return (self.model.pred != -1) & (self.radius[norm] >= eps)


def _at(table: Mapping[float, np.ndarray], eps: float) -> np.ndarray | None:
    for e, v in table.items():
        if math.isclose(e, eps, rel_tol=1e-6):
            return v
    return None


def eps_label(eps: float) -> str:
    """ε as the paper writes it: ``k/255`` when ε is a whole multiple of 1/255, else ``%g`` (not
    a column name: those are :func:`abstain.records.eps_text`)."""
    k = eps * 255
    return f"{round(k)}/255" if round(k) > 0 and abs(k - round(k)) < 1e-6 else f"{eps:g}"


def _dataset_from_path(path: Path) -> str | None:
    for part in reversed(path.parts[:-1]):
        if part in DATASETS:
            return part
    return None


def _show(v: str) -> str:
    """A field as an error message quotes it: at most 40 characters."""
    return repr(v if len(v) <= 40 else v[:40] + "…")


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    check_regular(path, MAX_BYTES, "authors' records file", DataError)   # no FIFO, device, huge file
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"corrupt authors' records file {path}: not UTF-8 text") from None
    except OSError as e:
        raise DataError(f"cannot read authors' records file {path}: {e.strerror or e}") from None
    if not text.strip():
        raise DataError(f"empty authors' records file {path}")
    if not text.endswith("\n"):   # pandas ends every row, the last one included, with a newline
        raise DataError(f"truncated authors' records file {path} (no newline after the last row)")
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise DataError(f"corrupt authors' records file {path}: {e}") from None
    header, body = rows[0], [r for r in rows[1:] if r]
    if not body:
        raise DataError(f"authors' records file {path} has a header but no rows")
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise DataError(f"truncated or corrupt authors' records file {path}: row {i + 1} has "
                            f"{len(r)} fields, the header {len(header)}")
    named = [h for h in header if h]
    dup = sorted({h for h in named if named.count(h) > 1})
    if dup:
        raise DataError(f"authors' records file {path}: duplicate columns {', '.join(dup)}")
    return header, body


def _ints(path: Path, name: str, raw: Sequence[str], minimum: int) -> np.ndarray:
    try:
        vals = np.asarray([float(v) for v in raw])
    except ValueError:
        bad = next(v for v in raw if not _is_float(v))
        raise DataError(f"authors' records file {path}: column {name} holds {_show(bad)}, "
                        "expected integers") from None
    if not np.isfinite(vals).all() or (vals != np.round(vals)).any():
        raise DataError(f"authors' records file {path}: column {name} holds non-integer values")
    if vals.size and np.abs(vals).max() > _MAX_INT:
        raise DataError(f"authors' records file {path}: column {name} holds {np.abs(vals).max():.3g}, "
                        "out of range for a sample index or class")
    out = vals.astype(np.int64)
    if out.size and out.min() < minimum:
        raise DataError(f"authors' records file {path}: column {name} holds {int(out.min())}, "
                        f"expected values >= {minimum}")
    return out


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _flags(path: Path, name: str, raw: Sequence[str]) -> np.ndarray:
    out = np.empty(len(raw), bool)
    for i, v in enumerate(raw):
        v = v.strip()
        if v in _TRUE:
            out[i] = True
        elif v in _FALSE:
            out[i] = False
        else:
            raise DataError(f"authors' records file {path}: column {name} holds {_show(v)} in row {i + 1}, "
                            "expected 0 or 1")
    return out


def _floats(path: Path, name: str, raw: Sequence[str]) -> np.ndarray:
    try:
        out = np.asarray([float(v) for v in raw])
    except ValueError:
        bad = next(v for v in raw if not _is_float(v))
        raise DataError(f"authors' records file {path}: column {name} holds {_show(bad)}, "
                        "expected numbers") from None
    if not np.isfinite(out).all():
        raise DataError(f"authors' records file {path}: column {name} holds NaN or infinite values")
    return out


def _sample_idx(path: Path, col: dict[str, list[str]]) -> np.ndarray:
    if "sample_idx" not in col:
        raise DataError(f"authors' records file {path}: no sample_idx column")
    idx = _ints(path, "sample_idx", col["sample_idx"], 0)
    uniq, counts = np.unique(idx, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"authors' records file {path}: duplicate sample_idx {int(uniq[counts > 1][0])}")
    return idx


def read_authors_csv(path: str | os.PathLike, dataset: str | None = None) -> AuthorsRecords:
    """Read one authors' records file (format in the module docstring, docs/paper-records.md).

    Model names and radii come from the column names (``<model>_is_rob<k>_255`` is the
    robustness of ``<model>`` at ε = k/255); the attack, norm, split and (smoothing) σ from
    the file name; ``dataset`` from the file name or, for smoothing files, the directory
    names (override with ``dataset``). Raises :class:`DataError` naming the file and the
    problem for a missing, non-UTF-8, truncated or otherwise malformed file.
    """
    path = Path(path)
    m_emp, m_smooth = _EMPIRICAL_NAME.match(path.name), _SMOOTHING_NAME.match(path.name)
    if not (m_emp or m_smooth):
        raise DataError(f"{path}: not an authors' records file name (expected "
                        "<split>_<dataset>_<norm>_<attack>.csv or <split>_smooth<σ>_N0<n0>_N<n>.csv)")
    header, body = _read_rows(path)
    col = {h: [r[j] for r in body] for j, h in enumerate(header) if h}
    idx = _sample_idx(path, col)
    if m_smooth:
        return _smoothing(path, col, idx, m_smooth, dataset)
    parts: dict[str, dict] = {}
    for name, raw in col.items():
        if name == "sample_idx":
            continue
        m = _COLUMN.match(name)
        if m is None:
            continue                       # an unknown extra column: not ours to judge
        model = parts.setdefault(m["model"], {"robust": {}, "certified": {}, "adv_conf": {}, "extra": {}})
        kind = m["kind"]
        if m["flag"]:
            eps = float(m["num"]) / float(m["den"])
            if m["flag"] == "adv_conf":
                model["adv_conf"][eps] = _floats(path, name, raw)
            else:
                model["robust" if m["flag"] == "is_rob" else "certified"][eps] = _flags(path, name, raw)
        elif kind == "is_acc":
            model["is_acc"] = _flags(path, name, raw)
        elif kind == "pred":
            model["pred"] = _ints(path, name, raw, 0)
        elif kind == "nat_conf":
            model["extra"][kind] = _floats(path, name, raw)
        else:
            model["extra"][kind] = _flags(path, name, raw)
    if not parts:
        raise DataError(f"authors' records file {path}: no <model>_is_acc / <model>_pred columns")
    models: dict[str, ModelRecords] = {}
    for name, p in parts.items():
        missing = [f"{name}_{k}" for k in ("is_acc", "pred") if k not in p]
        if missing:
            raise DataError(f"authors' records file {path}: missing column {', '.join(missing)}")
        models[name] = ModelRecords(name=name, **p)
    ds = dataset or m_emp["dataset"]
    return AuthorsRecords(path=path, dataset=ds, split=m_emp["split"], attack=m_emp["attack"],
                          norm=m_emp["norm"], sigma=None, sample_idx=idx, models=models)


def _smoothing(path: Path, col: dict[str, list[str]], idx: np.ndarray, m: re.Match,
               dataset: str | None) -> AuthorsRecords:
    missing = [c for c in _SMOOTHING_COLUMNS if c not in col]
    radius_cols = [c for c in ("l2_radius", "linf_radius") if c in col]
    if missing or not radius_cols:
        missing += [] if radius_cols else ["l2_radius"]
        raise DataError(f"authors' records file {path}: missing column {', '.join(missing)}")
    label = _ints(path, "label", col["label"], 0)
    pred = _ints(path, "prediction", col["prediction"], -1)
    radius = {c.split("_")[0]: _floats(path, c, col[c]) for c in radius_cols}
    for c in radius_cols:
        r = radius[c.split("_")[0]]
        if r.size and r.min() < 0:       # Cohen et al.'s radius σ·Φ⁻¹(p_A) is >= 0 where not abstaining
            raise DataError(f"authors' records file {path}: column {c} holds {r.min():g}, a certified "
                            "radius is >= 0")
    extra = {}
    if "base_prediction" in col:
        extra["base_pred"] = _ints(path, "base_prediction", col["base_prediction"], 0)
    run = path.parent.parent.name if path.parent.name == "smoothing" else path.parent.name
    model = ModelRecords(name=run, is_acc=pred == label, pred=pred, extra=extra)
    return AuthorsRecords(path=path, dataset=dataset or _dataset_from_path(path), split=m["split"],
                          attack="smoothing", norm=None, sigma=float(m["sigma"]), sample_idx=idx,
                          models={run: model}, label=label, radius=radius)


def infer_labels(records: Iterable[AuthorsRecords]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels of the samples of several records files of one test set.

    Returns ``(sample_idx, label, known)`` sorted by ``sample_idx`` over the union of the
    files' samples: where some model is accurate (or a smoothing file gives the label) the
    label is known; elsewhere ``label`` is one more than the largest class any model
    predicts, a class no model predicts, so every model counts as inaccurate there, as its
    ``is_acc`` says. Raises :class:`DataError` naming the file when the files contradict
    each other (two accurate models with different predictions, or ``is_acc`` = 0 where the
    prediction equals a known label): they then do not describe the same samples.
    """
    records = list(records)
    if not records:
        raise DataError("no authors' records files to infer labels from")
    idx = np.unique(np.concatenate([r.sample_idx for r in records]))
    pos = {int(i): j for j, i in enumerate(idx)}
    label = np.full(idx.size, -1, np.int64)
    top = 0
    for r in records:
        rows = np.fromiter((pos[int(i)] for i in r.sample_idx), np.int64, r.sample_idx.size)
        if r.label is not None:
            _merge(label, rows, r.label, np.ones(rows.size, bool), r.path)
            top = max(top, int(r.label.max()))
        for m in r.models.values():
            _merge(label, rows, m.pred, m.is_acc, r.path)
            top = max(top, int(m.pred.max()))
    known = label >= 0
    for r in records:              # second pass: inaccurate predictions must differ from the label
        rows = np.fromiter((pos[int(i)] for i in r.sample_idx), np.int64, r.sample_idx.size)
        for m in r.models.values():
            bad = ~m.is_acc & known[rows] & (m.pred == label[rows])
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                raise DataError(f"{r.path}: sample {int(r.sample_idx[j])} is marked inaccurate for "
                                f"{m.name} but its prediction {int(m.pred[j])} is the label other "
                                "records give: the files do not describe the same test samples")
    label[~known] = top + 1
    return idx, label, known


def _merge(label: np.ndarray, rows: np.ndarray, pred: np.ndarray, acc: np.ndarray, path: Path) -> None:
    r, p = rows[acc], pred[acc]
    clash = (label[r] >= 0) & (label[r] != p)
    if clash.any():
        j = int(np.flatnonzero(clash)[0])
        raise DataError(f"{path}: an accurate prediction {int(p[j])} contradicts the label "
                        f"{int(label[r[j]])} other records give for the same sample: the files do "
                        "not describe the same test samples")
    label[r] = p


__all__ = ["AuthorsRecords", "ModelRecords", "read_authors_csv", "infer_labels", "eps_label", "DATASETS"]

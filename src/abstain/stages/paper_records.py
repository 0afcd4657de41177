"""Stage ``paper-records``: the paper's tables recomputed from the authors' published records.

The authors' repository (``ymerkli/robust-abstain``, checked out at ``<data-root>/robust-abstain``)
ships the per-sample evaluation of nearly every model of the paper (format:
:mod:`abstain.authors_records`, ``docs/paper-records.md``). This stage reads every ℓ∞ APGD
file and every randomized-smoothing file under ``robustabstain/models/``, writes them as our
per-sample records (``records/<dataset>--<family>--<run>[--smooth<σ>].csv``: ``index, label,
label_known, pred, robust@<ε>…``, or ``pred, base_pred, radius_l2, radius_linf`` for smoothing)
and recomputes from those records, with :mod:`abstain.metrics` only:

* the partition (eq. 2, 3) of every model at every ε it was evaluated at: Tables 1, 8, 9 and
  the points of Fig. 2/7; the core models of Table 7;
* the robustness-indicator abstain model (F, S_ERI) (eq. 12, 14): Table 5 and the points of
  Fig. 3/8, both as the authors count it (robust selection = robustness at ε) and soundly
  (robust selection = robustness at 2ε, eq. 14), where the file holds the 2ε flag;
* the 2-compositional models (eq. 15) of every robust model with the dataset's core model:
  Tables 4, 6 and the points of Fig. 4/9, with the authors' count (their code: the selector is
  F's robustness at 2ε, and where it does not select, the core model is assumed to answer in the
  whole ball, :func:`abstain.metrics.paper_robust_accurate`) beside the sound one
  (:func:`abstain.metrics.composition_metrics`, S = S_ERI at ε, robust selection at 2ε);
* Tables 2 and 3 (randomized smoothing; CRI: certified radius ≥ ε).

The paper names no run where the records hold several (β sweeps); such cells are compared
with the run whose numbers lie closest to the printed ones, and the report says so.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..authors_records import infer_labels, read_authors_csv
from ..errors import DataError
from ..metrics import abstain_metrics, partition
from ..records import ROBUST, Records, column, flag, radii, read_records
from .base import Stage

NAME = "paper-records"
TITLE = ("paper-records — the paper's Tables 1–9 recomputed from the authors' published "
         "per-sample records")
DEPENDS: tuple[str, ...] = ()
CHECKOUT = "robust-abstain"
MODELS_DIR = "robustabstain/models"
REPO_URL = "https://github.com/ymerkli/robust-abstain"
EXPECTED_SECONDS = (40.0, 40.0)

# σ of the smoothing files -> the ℓ2 radius the paper certifies them at (Tables 2, 3)
SMOOTHING_EPS = {0.06: 0.12, 0.12: 0.25}

# --------------------------------------------------------------------------- the paper's numbers
# printed as strings: the number of decimals sets how close ours must be to reproduce it
BASES = {"zhang": "resnet50_{ds}", "carmon": "Carmon2019Unlabeled", "gowal": "Gowal2020Uncovering_28_10_extra",
         "rebuffi": "Rebuffi2021Fixing_28_10_cutmix_ddpm"}
MODEL_TEXT = {"zhang": "Zhang et al. (ResNet-50, TRADES)", "carmon": "Carmon et al.", "gowal": "Gowal et al.",
              "rebuffi": "Rebuffi et al.", "std": "core (standard training)"}
# Table 1: robust inaccuracy (%), "each model trained for the indicated threat model"
TABLE1 = {("cifar10", "zhang"): {1: "4.6", 4: "3.3", 8: "2.6"},
          ("cifar10", "carmon"): {1: "3.6", 4: "1.1", 8: "0.8"},
          ("cifar10", "gowal"): {1: "2.9", 4: "0.9", 8: "1.3"},
          ("cifar100", "rebuffi"): {1: "15.2", 4: "4.3", 8: "3.9"},
          ("mtsd_l", "zhang"): {1: "3.9", 4: "2.3", 8: "1.7"},
          ("sbb_l", "zhang"): {1: "7.0", 4: "7.1", 8: "6.4"}}
# Tables 8 (CIFAR-10) and 9 (CIFAR-100): |D^{¬r¬a}|, |D^{r¬a}|, |D^{¬ra}|, |D^{ra}| (%)
PART_KEYS = ("nonrob_inacc", "rob_inacc", "nonrob_acc", "rob_acc")
TABLE8 = {"zhang": {1: ("5.17", "4.64", "6.18", "84.01"), 2: ("7.94", "4.13", "10.38", "77.55"),
                    4: ("13.42", "3.31", "17.19", "66.08"), 8: ("18.17", "2.64", "29.79", "49.40")},
          "carmon": {1: ("3.33", "3.61", "3.32", "89.74"), 2: ("7.38", "2.40", "3.20", "87.02"),
                     4: ("8.23", "1.05", "16.87", "73.85"), 8: ("9.55", "0.76", "27.82", "61.87")},
          "gowal": {1: ("2.85", "2.88", "3.87", "90.40"), 2: ("4.86", "2.25", "6.74", "86.15"),
                    4: ("6.64", "0.87", "15.96", "76.53"), 8: ("9.21", "1.31", "23.78", "65.70")},
          "std-resnet50": {1: ("6.97", "0.0", "74.89", "18.14"), 2: ("6.97", "0.0", "91.80", "1.23"),
                           4: ("6.97", "0.0", "93.03", "0.0"), 8: ("6.97", "0.0", "93.03", "0.0")}}
TABLE9 = {"rebuffi": {1: ("15.20", "15.24", "7.75", "61.81"), 2: ("32.75", "8.71", "5.11", "53.43"),
                      4: ("30.57", "4.34", "23.16", "41.93"), 8: ("33.70", "3.91", "26.66", "35.73")},
          "std": {1: ("19.80", "0.03", "60.27", "19.9"), 2: ("19.82", "0.01", "77.11", "3.06"),
                  4: ("19.83", "0.0", "80.02", "0.15"), 8: ("19.83", "0.0", "80.17", "0.0")}}
# Table 7: core models, R_nat and R_rob^acc at 1, 2, 4/255 (%)
CORES = {"cifar10": r"^wrn4010_cifar10_std__", "cifar100": r"^wrn2810_cifar100_std__",
         "mtsd_l": r"^resnet50_mtsd_l_std__", "sbb_l": r"^resnet50_sbb_l_w?std__"}
TABLE7 = {"cifar10": ("97.81", {1: "26.18", 2: "2.92", 4: "0.06"}),
          "cifar100": ("80.17", {1: "19.9", 2: "3.06", 4: "0.15"}),
          "mtsd_l": ("93.79", {1: "74.66", 2: "40.71", 4: "7.51"}),
          "sbb_l": ("91.37", {1: "75.65", 2: "44.69", 4: "8.76"})}
# Table 5: (loss, AutoAugment, k) -> (R_rob^sel, R_rob^acc) (%), ResNet-50 of Zhang et al., CIFAR-10
TABLE5 = {("era", False, 1): ("86.31", "96.63"), ("dga", False, 1): ("84.98", "94.92"),
          ("era", True, 1): ("83.44", "97.47"), ("dga", True, 1): ("80.72", "96.56"),
          ("era", False, 2): ("78.24", "97.33"), ("dga", False, 2): ("75.73", "96.22"),
          ("era", True, 2): ("74.63", "98.31"), ("dga", True, 2): ("73.59", "97.88")}
# Table 6 (Table 4 repeats the cells marked in TABLE4): (dataset, model, k) -> (R_rob^acc, R_nat) (%)
TABLE6 = {("cifar10", "carmon", 1): ("86.5", "97.6"), ("cifar10", "gowal", 1): ("87.8", "98.0"),
          ("cifar100", "rebuffi", 1): ("44.0", "80.5"), ("mtsd_l", "zhang", 1): ("84.5", "94.1"),
          ("sbb_l", "zhang", 1): ("88.4", "92.3"),
          ("cifar10", "carmon", 2): ("73.4", "97.8"), ("cifar10", "gowal", 2): ("78.2", "97.9"),
          ("cifar100", "rebuffi", 2): ("41.9", "80.18"), ("mtsd_l", "zhang", 2): ("69.9", "94.0"),
          ("sbb_l", "zhang", 2): ("82.4", "91.3")}
TABLE4 = {("cifar10", "carmon", 1), ("cifar100", "rebuffi", 2), ("mtsd_l", "zhang", 2)}
# ERA runs of Table 6 fine-tune these models (mrevadv/<ds>/Linf/<k>_255/mra<k>_255[_aug]__<base>)
ERA_BASES = {"carmon": "Carmon2019Unlabeled", "gowal": "Gowal2020Uncovering_28_10_extra",
             "rebuffi": "Rebuffi2021Fixing_28_10_cutmix_ddpm", "zhang": "resnet50_{ds}_trades8_255"}
# Tables 2 and 3: (model, fine-tuning, σ) -> (R_rob^acc, R_rob^¬acc, R_rob^sel, R_rob^acc of S_CRI) (%)
TABLE23 = {("cohen", "noise", 0.06): ("74.0", "2.8", "76.8", "96.35"),
           ("cohen", "cra", 0.06): ("71.6", "2.6", "74.2", "96.50"),
           ("sehwag", "noise", 0.06): ("87.0", "1.8", "88.8", "97.97"),
           ("sehwag", "cra", 0.06): ("90.8", "1.6", "92.4", "98.27"),
           ("cohen", "noise", 0.12): ("62.0", "1.0", "63.0", "98.41"),
           ("cohen", "cra", 0.12): ("53.8", "0.4", "54.2", "99.26"),
           ("sehwag", "noise", 0.12): ("77.4", "1.4", "78.8", "98.22"),
           ("sehwag", "cra", 0.12): ("82.2", "0.8", "83.0", "99.04")}
SMOOTH_BASES = {"cohen": "resnet110_cifar10_gaussaugm0.12", "sehwag": "Sehwag2021Proxy_R18"}
# numbers stated in the text: (where, what, dataset, family, run pattern, k, {metric: printed %})
TEXT_CLAIMS = (
    ("Sec. 7.1", "Carmon et al. TRADES fine-tune, CIFAR-10 2/255", "cifar10", "adv",
     r"^Carmon2019Unlabeled_cifar10_(autoaugment_)?trades2_255ft__", 2, {"rob_acc": "86.5", "rob_inacc": "1.34"}),
    ("Sec. 7.1", "Carmon et al. ERA fine-tune, CIFAR-10 2/255", "cifar10", "mrevadv",
     r"^mra2_255(_autoaugment)?__Carmon2019Unlabeled__", 2, {"rob_acc": "83.8", "rob_inacc": "0.29"}),
    ("A.5", "Carmon et al. TRADES fine-tune, CIFAR-10 1/255", "cifar10", "adv",
     r"^Carmon2019Unlabeled_cifar10_(autoaugment_)?trades1_255ft__", 1, {"rob_acc": "91.7", "rob_inacc": "1.8"}),
    ("A.5", "Carmon et al. ERA fine-tune, CIFAR-10 1/255", "cifar10", "mrevadv",
     r"^mra1_255(_autoaugment)?__Carmon2019Unlabeled__", 1, {"rob_acc": "75.8", "rob_inacc": "0.14"}),
)


# --------------------------------------------------------------------------- stage interface
def config(scale: str, demo: bool) -> dict:
    """What the stage reads (the same at every scale: the records are the authors' full runs)."""
    return {"checkout": CHECKOUT, "models_dir": MODELS_DIR, "attacks": ["apgd", "smoothing"],
            "norm": "Linf", "records_format": 1}


def _models_root(data_root: Path | None, cfg: Mapping[str, Any] | None = None) -> Path:
    cfg = cfg or config("paper", False)
    base = Path(data_root) if data_root is not None else Path("<data-root>")
    return base / cfg["checkout"] / cfg["models_dir"]


def missing_data(cfg: Mapping[str, Any], data_root: Path | None) -> list[str]:
    """The checkout of the authors' repository, when it is not under ``data_root``."""
    models = _models_root(data_root, cfg)
    if data_root is not None and models.is_dir() and any(models.rglob("testset_*.csv")):
        return []
    checkout = models.parents[1]
    what = ("the authors' public repository with their per-sample records "
            f"(`git clone {REPO_URL} {checkout}`)")
    if data_root is not None and checkout.is_dir():
        what = (f"no testset_*.csv records under {models} (a checkout of {REPO_URL} "
                "at its latest commit has them)")
    return [f"{checkout}: {what}"]


def run(ctx: Any, cfg: dict) -> dict:
    """Read the authors' records, write them as our records, return the metrics (fractions)."""
    root = _models_root(ctx.data_root, cfg)
    lines = missing_data(cfg, ctx.data_root)
    if lines:
        raise DataError("paper-records needs " + "; ".join(lines))
    files = sorted(root.rglob("testset_*_Linf_apgd.csv")) + sorted(root.rglob("smoothing/testset_smooth*.csv"))
    it = ctx.progress(files, total=len(files), desc="authors' records") if ctx.progress else files
    recs = [read_authors_csv(f) for f in it]
    by_ds: dict[str, list] = defaultdict(list)
    for r in recs:
        if r.dataset is None:
            raise DataError(f"{r.path}: cannot tell the dataset from the path")
        by_ds[r.dataset].append(r)
    meta_labels = {}
    for ds, rs in sorted(by_ds.items()):
        idx, label, known = infer_labels(rs)
        pos = {int(i): j for j, i in enumerate(idx)}
        meta_labels[ds] = {"samples": int(idx.size), "labels_known": int(known.sum())}
        for r in rs:
            rows = np.fromiter((pos[int(i)] for i in r.sample_idx), np.int64, r.sample_idx.size)
            m = r.model
            family = r.path.relative_to(root).parts[0]
            cols: dict[str, Any] = {"index": r.sample_idx, "label": label[rows], "label_known": known[rows],
                                    "pred": m.pred}
            if r.attack == "smoothing":
                cols.update({"base_pred": m.extra.get("base_pred", np.full(rows.size, -1)),
                             "radius_l2": r.radius.get("l2", np.zeros(rows.size)),
                             "radius_linf": r.radius.get("linf", np.zeros(rows.size))})
                name = f"{ds}--{family}--{_safe(r.run)}--smooth{r.sigma:g}"
            else:
                cols.update({column(ROBUST, e): m.robust[e] for e in m.eps})
                name = f"{ds}--{family}--{_safe(r.run)}"
            ctx.write_records(name, cols)
    results = _results(_load_dir(ctx.records_dir))
    results["meta"] = {"checkout": str(root.parents[1]), "files": len(recs),
                       "datasets": meta_labels, "norm": "Linf", "attack": "APGD (authors' 40 steps)",
                       "eps": sorted({e for r in recs if r.attack != "smoothing" for e in r.model.eps})}
    return results


def _safe(run: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", run).replace("--", "__")


# --------------------------------------------------------------------------- records -> metrics
class Rec:
    """One records file of this stage (our format), with what its name says."""

    def __init__(self, name: str, cols: Mapping[str, np.ndarray]):
        parts = name.split("--")
        self.name, self.dataset, self.family, self.run = name, parts[0], parts[1], parts[2]
        self.sigma = float(parts[3][len("smooth"):]) if len(parts) > 3 else None
        self.cols = cols
        self.records = Records(cols)
        self.label = np.asarray(cols["label"])
        self.pred = np.asarray(cols["pred"])
        self.eps = radii(cols, ROBUST)

    @property
    def origin(self) -> str:
        """``run of YYYY-MM-DD`` from the run name, or what the record is without a date."""
        m = re.search(r"__(\d{8})_(\d{4})", self.run)
        return f"run of {m[1][:4]}-{m[1][4:6]}-{m[1][6:]}" if m else "the published model's evaluation"

    def rob(self, eps: float) -> np.ndarray | None:
        """The ``robust@ε`` flag, or None when the record has none at ``eps``."""
        try:
            return flag(self.cols, ROBUST, eps)
        except KeyError:
            return None

    def ks(self) -> list[int]:
        """The radii k/255 of the robustness flags (whole k only)."""
        out = []
        for e in self.eps:
            k = e * 255
            if abs(k - round(k)) < 1e-3 and round(k) > 0:
                out.append(int(round(k)))
        return out


def _load_dir(records_dir: Path) -> list[Rec]:
    return [Rec(f.stem, read_records(f)) for f in sorted(Path(records_dir).glob("*.csv"))]


def _eps(k: int) -> float:
    return k / 255


def _part(r: Rec, k: int) -> dict[str, float]:
    """Partition at k/255 (eq. 2, 3) and (F, S_ERI): the authors' count (robust selection =
    robustness at ε) and the sound one (eq. 14: robustness at 2ε; absent without the flag)."""
    e = _eps(k)
    out = r.records.partition(e)
    a = r.records.indicator_metrics(e, sound=False)
    out.update({"rob_sel_paper": a["rob_sel"], "sel_rob_acc_paper": a["sel_rob_acc"]})
    if r.rob(_eps(2 * k)) is not None:
        s = r.records.indicator_metrics(e)
        out.update({"rob_sel": s["rob_sel"], "sel_rob_acc": s["sel_rob_acc"]})
    return out


def _compose(r: Rec, core: Rec, k: int) -> dict[str, float]:
    """2-compositional model (eq. 15) of robust model ``r`` and ``core`` at k/255.

    ``*_paper``: the authors' count (their ``compositional_accuracy`` with ``--eval-2xeps``):
    the selector is F's robustness at 2ε, both on the clean input and as robust selection,
    and where it does not select the core model is assumed to answer in the whole ball
    (:func:`abstain.metrics.paper_robust_accurate`); without a 2ε flag, robustness at ε.
    Sound (``nat_acc``, ``rob_acc``; only with the 2ε flag): S = S_ERI at ε (eq. 12), robust
    selection = robustness at 2ε (eq. 14), :func:`abstain.metrics.composition_metrics`.
    """
    if not np.array_equal(r.cols["index"], core.cols["index"]):
        raise DataError(f"records {r.name} and {core.name} hold other samples or another order")
    e = _eps(k)
    rob, rob2 = r.rob(e), r.rob(_eps(2 * k))
    sel = rob2 if rob2 is not None else rob
    paper = r.records.composition(core.records, e, selected=sel, robust_selected=sel)
    out = {"nat_acc_paper": paper["nat_acc"], "rob_acc_paper": paper["rob_acc_paper"],
           "selector_paper_2eps": float(rob2 is not None),
           "core_nat_acc": paper["core_nat_acc"], "core_rob_acc": paper["core_rob_acc"]}
    if rob2 is not None:
        sound = r.records.composition(core.records, e)
        out.update({key: sound[key] for key in ("nat_acc", "rob_acc", "coverage")})
    return out


def _smooth(r: Rec) -> dict[str, float]:
    """Partition and (G, S_CRI) at the paper's ℓ2 radius for σ (Tables 2, 3): robust iff the
    smoothed classifier does not abstain and its certified radius is ≥ ε (Section 5)."""
    eps = SMOOTHING_EPS.get(round(r.sigma, 4), 2 * r.sigma)
    cert = (r.pred != -1) & (np.asarray(r.cols["radius_l2"]) >= eps)
    out = {"eps_l2": eps, **partition(r.label, r.pred, cert)}
    a = abstain_metrics(r.label, r.pred, cert, cert, cert)
    out.update({"rob_sel": a["rob_sel"], "sel_rob_acc": a["sel_rob_acc"]})
    return out


def _core(recs: Iterable[Rec], ds: str) -> Rec | None:
    hits = [r for r in recs if r.dataset == ds and r.family == "std" and re.match(CORES.get(ds, "^$"), r.run)]
    return hits[-1] if hits else None


def _robust_models(recs: Iterable[Rec]) -> list[Rec]:
    return [r for r in recs if r.sigma is None and r.family in ("adv", "mrevadv", "grevadv")]


def _results(recs: list[Rec]) -> dict[str, Any]:
    """results.json: ``<dataset>/<run>/<k>_255`` (partition, S_ERI), ``compose/<dataset>/<run>+<core>/<k>_255``,
    ``<dataset>/<run>/smooth<σ>/l2=<ε>``; fractions."""
    out: dict[str, Any] = {}
    for r in recs:
        if r.sigma is not None:
            m = _smooth(r)
            out[f"{r.dataset}/{r.run}/smooth{r.sigma:g}/l2={m['eps_l2']:g}"] = m
            continue
        for k in r.ks():
            out[f"{r.dataset}/{r.run}/{k}_255"] = _part(r, k)
    for r in _robust_models(recs):
        core = _core(recs, r.dataset)
        if core is None:
            continue
        for k in r.ks():
            if core.rob(_eps(k)) is not None:
                out[f"compose/{r.dataset}/{r.run}+{core.run}/{k}_255"] = _compose(r, core, k)
    return out


# --------------------------------------------------------------------------- paper cells
def _decimals(s: str) -> int:
    return len(s.split(".")[1]) if "." in s else 0


def _same(ours: float | None, printed: str | None) -> bool | None:
    """Does ``ours`` (in %) round to the printed number? None when either is missing."""
    if ours is None or printed is None:
        return None
    return abs(ours - float(printed)) <= 0.5 * 10 ** -_decimals(printed) + 1e-9


def _pct(v: float | None) -> float | None:
    return None if v is None else round(100 * v, 4)


def _find(recs: Iterable[Rec], ds: str, family: str, pattern: str) -> list[Rec]:
    return [r for r in recs if r.dataset == ds and r.family == family and r.sigma is None
            and re.match(pattern, r.run)]


def _trades_model(recs: list[Rec], ds: str, model: str, k: int) -> tuple[Rec | None, str]:
    """The record of ``model`` trained for k/255 (Table 1: "each model is trained for the
    indicated threat model"): the 8/255 model itself, else its TRADES fine-tune at k/255
    without augmentation, else (marked) with augmentation."""
    base = BASES[model].format(ds=ds)
    if k == 8:
        pat = rf"^{re.escape(base)}_trades8_255__" if model == "zhang" else rf"^{re.escape(base)}$"
        hits = _find(recs, ds, "adv", pat)
        return (hits[-1], "") if hits else (None, "")
    hits = _find(recs, ds, "adv", rf"^{re.escape(base)}_{ds}_trades{k}_255ft__") if model != "zhang" else \
        _find(recs, ds, "adv", rf"^{re.escape(base)}_trades{k}_255ft__")
    if hits:
        return hits[-1], ""
    aug = _find(recs, ds, "adv", rf"^{re.escape(base)}_({ds}_)?(autoaugment|stdaug)_trades{k}_255ft__")
    if aug:
        return aug[-1], "with augmentation: the records hold no fine-tune without it"
    return None, ""


class Verdicts:
    """Tally of the paper's cells: reproduced (True), not reproduced (False), no record (None)."""

    def __init__(self) -> None:
        self.cells: list[tuple[str, str, bool | None, str]] = []   # (table, cell, ok, why)

    def add(self, table: str, cell: str, pairs: list[tuple[float | None, str | None]], why: str = "") -> None:
        checks = [_same(o, p) for o, p in pairs if p is not None]
        ok = None if not checks or any(c is None for c in checks) else all(checks)
        self.cells.append((table, cell, ok, why))


def _row_paper(n_label: int, values: list[str | None]) -> list:
    return [None] * n_label + [None if v is None else float(v) for v in values]


def _table(caption: str, columns: list[str], rows: list[list], paper: list[list] | None = None) -> dict:
    return {"kind": "table", "caption": caption, "columns": columns, "rows": rows, "paper": paper}


def _text(text: str) -> dict:
    return {"kind": "text", "text": text}


def _picked(n: int) -> str:
    return "" if n == 1 else f"closest of {n} runs (the paper names none)"


def report(stage_dir: Path) -> list[dict]:
    """Every table recomputed from ``records/*.csv``; the paper's numbers beside ours (%)."""
    recs = _load_dir(Path(stage_dir) / "records")
    if not recs:
        return [_text("No records: the stage wrote none.")]
    v = Verdicts()
    by_ds = defaultdict(list)
    for r in recs:
        by_ds[r.dataset].append(r)
    n_lin = sum(r.sigma is None for r in recs)
    known = ", ".join(f"{ds}: {int(np.sum(rs[0].cols['label_known']))} of {len(rs[0].label)}"
                      for ds, rs in sorted(by_ds.items()))
    intro = _text(
        f"The authors' per-sample records ({REPO_URL}, `robustabstain/models/`): {n_lin} ℓ∞ APGD files and "
        f"{len(recs) - n_lin} randomized-smoothing files, read with `abstain.authors_records` and written as "
        "this stage's records; every number below is recomputed from those with `abstain.metrics`. The ℓ∞ "
        "files hold no labels, only whether each prediction is correct; the label is recovered from the models "
        f"that are accurate on a sample ({known} samples); on the others every model is wrong, which is all the "
        "metrics need. Numbers are % of the test set; a paper number counts as reproduced when ours rounds to "
        "it at the printed precision. Not computed here: the softmax-response (APGDconf files) and ACE "
        "selection-network models of Fig. 3/4.")
    tables = (_table1(recs, v) + _table89(recs, v) + _table7(recs, v) + _table5(recs, v) + _table6(recs, v)
              + _table23(recs, v) + _claims(recs, v) + _all_models(recs) + _all_compositions(recs))
    return [intro, _summary(v), *tables]


def _table1(recs: list[Rec], v: Verdicts) -> list[dict]:
    rows, paper = [], []
    for (ds, model), cells in TABLE1.items():
        for k, printed in cells.items():
            r, note = _trades_model(recs, ds, model, k)
            ours = _pct(_part(r, k)["rob_inacc"]) if r is not None and r.rob(_eps(k)) is not None else None
            if r is None:
                why = "no record of this model"
            else:
                why = note or ("" if _same(ours, printed) else f"the record ({r.origin}) gives {ours:.2f}")
            v.add("Table 1", f"{ds} {MODEL_TEXT[model]} {k}/255", [(ours, printed)], why)
            rows.append([ds, MODEL_TEXT[model], f"{k}/255", r.run if r else "no record", ours])
            paper.append(_row_paper(4, [printed]))
    return [_table("Table 1: robust inaccuracy R_rob^¬acc (eq. 3, %) of each model trained for the threat model "
                   "(8/255: the published model; 1, 4/255: its TRADES fine-tune), 40-step APGD",
                   ["dataset", "model", "ε", "record (run)", "R_rob^¬acc %"], rows, paper)]


def _table89(recs: list[Rec], v: Verdicts) -> list[dict]:
    out = []
    for ds, table, name in (("cifar10", TABLE8, "Table 8"), ("cifar100", TABLE9, "Table 9")):
        rows, paper = [], []
        for model, by_k in table.items():
            for k, printed in by_k.items():
                if model == "std":
                    r, note = _core(recs, ds), ""
                elif model in BASES:
                    r, note = _trades_model(recs, ds, model, k)
                else:
                    r, note = None, ""
                m = _part(r, k) if r is not None and r.rob(_eps(k)) is not None else None
                ours = [_pct(m[key]) if m else None for key in PART_KEYS]
                why = "no record of this model" if r is None else note or _partition_why(r, ours, printed)
                label = MODEL_TEXT.get(model, "standard-trained ResNet-50")
                v.add(name, f"{label} {k}/255", list(zip(ours, printed)), why)
                rows.append([label, f"{k}/255", r.run if r else "no record", *ours])
                paper.append(_row_paper(3, list(printed)))
        out.append(_table(f"{name}: {ds} robustness–accuracy partition (%), ¬r¬a, r¬a, ¬ra, ra (Appendix A.9)",
                          ["model", "ε", "record (run)", "¬r¬a %", "r¬a %", "¬ra %", "ra %"], rows, paper))
    return out


def _partition_why(r: Rec, ours: list[float | None], printed: tuple[str, ...]) -> str:
    """Why a partition row (¬r¬a, r¬a, ¬ra, ra) is not reproduced, as far as the numbers tell."""
    same = [_same(o, p) for o, p in zip(ours, printed)]
    if all(same):
        return ""
    names = ["¬r¬a", "r¬a", "¬ra", "ra"]
    diff = ", ".join(f"{n} {o:.2f} vs {p}" for n, o, p, s in zip(names, ours, printed, same) if not s)
    if same[1] and same[3]:
        # the robust parts agree: the same robustness flags, another count of the accurate samples
        nat_p, nat_o = float(printed[2]) + float(printed[3]), ours[2] + ours[3]
        return (f"{diff}; the robust parts match, but the paper's row implies R_nat = {nat_p:.2f}% where the "
                f"record ({r.origin}) has {nat_o:.2f}%")
    return f"{diff} (record: {r.origin})"


def _table7(recs: list[Rec], v: Verdicts) -> list[dict]:
    rows, paper = [], []
    for ds, (nat, by_k) in TABLE7.items():
        core = _core(recs, ds)
        ours = [_pct(float(np.mean(core.pred == core.label))) if core else None]
        ours += [_pct(_part(core, k)["rob_acc"]) if core and core.rob(_eps(k)) is not None else None
                 for k in by_k]
        printed = [nat, *by_k.values()]
        v.add("Table 7", f"{ds} core model", list(zip(ours, printed)), "" if core else "no record of this model")
        rows.append([ds, core.run if core else "no record", *ours])
        paper.append(_row_paper(2, printed))
    return [_table("Table 7: core models (standard training), R_nat and R_rob^acc (%) at 1, 2, 4/255",
                   ["dataset", "record (run)", "R_nat %", "R_rob^acc 1/255 %", "R_rob^acc 2/255 %",
                    "R_rob^acc 4/255 %"], rows, paper)]


def _closest(cands: list[tuple[Rec, list[float | None]]], printed: Iterable[str]) -> tuple[Rec, list] | None:
    """The candidate whose values lie closest (max abs difference) to the printed ones."""
    target = [float(p) for p in printed]
    best = None
    for r, vals in cands:
        if any(x is None for x in vals):
            continue
        d = max(abs(a - b) for a, b in zip(vals, target))
        if best is None or d < best[0]:
            best = (d, r, vals)
    return (best[1], best[2]) if best else None


def _table5(recs: list[Rec], v: Verdicts) -> list[dict]:
    rows, paper, n_2eps, starts = [], [], 0, defaultdict(set)
    for (loss, aa, k), printed in TABLE5.items():
        fam, pre = ("mrevadv", "mra") if loss == "era" else ("grevadv", "gra")
        pat = rf"^{pre}{k}_255{'_autoaugment' if aa else ''}__resnet50_cifar10_trades\d+_255__"
        cands = {}
        for r in _find(recs, "cifar10", fam, pat):
            if r.rob(_eps(k)) is not None:
                m = _part(r, k)
                cands[r.name] = (r, [_pct(m["rob_sel_paper"]), _pct(m["sel_rob_acc_paper"]),
                                     _pct(m.get("rob_sel")), _pct(m.get("sel_rob_acc"))])
        n_2eps += sum(vals[2] is not None for _, vals in cands.values())
        hit = _closest([(r, vals[:2]) for r, vals in cands.values()], printed)
        label = f"{loss.upper()}{' + AA' if aa else ''}"
        if hit is None:
            v.add("Table 5", f"{label} {k}/255", [(None, p) for p in printed], "no record of this model")
            rows.append([label, f"{k}/255", "no record", 0, None, None, None, None])
        else:
            r, vals = hit[0], cands[hit[0].name][1]
            v.add("Table 5", f"{label} {k}/255", list(zip(vals[:2], printed)), _picked(len(cands)))
            rows.append([label, f"{k}/255", r.run, len(cands), *vals])
            starts[loss.upper()].add(re.search(r"__(resnet50_cifar10_trades\d+_255)__", r.run)[1])
        paper.append(_row_paper(4, [*printed, None, None]))
    note = _text(
        "Table 5's R_rob^sel is the fraction robust at ε (the authors' `robind_commit_rate`), not eq. 14's "
        f"robust selection, which needs robustness at 2ε: of the {sum(r[3] for r in rows)} ERA/DGA runs behind "
        f"this table, the flag at 2ε is in {n_2eps}, so the sound robust selection is missing where the row "
        "shows a dash. Starting models of the runs shown (from the run names): " + "; ".join(
            f"{loss}: {', '.join(sorted(s))}" for loss, s in sorted(starts.items()))
        + " (Appendix A.3: the TRADES ResNet-50 trained for 8/255).")
    return [note, _table(
        "Table 5: ERA vs DGA fine-tunes of the TRADES ResNet-50 (CIFAR-10), abstain model (F, S_ERI). Authors' "
        "count: robust selection R_rob^sel = robust at ε (what the paper prints); sound (eq. 14): robust at 2ε, "
        "only where the file holds the 2ε flag. Among several runs (β sweep) the one closest to the paper's "
        "numbers is shown",
        ["fine-tuning", "ε", "record (run)", "runs", "R_rob^sel % (authors)", "R_rob^acc % (authors)",
         "R_rob^sel % (sound, 2ε)", "R_rob^acc % (sound, 2ε)"], rows, paper)]


def _table6(recs: list[Rec], v: Verdicts) -> list[dict]:
    rows, paper = [], []
    for (ds, model, k), printed in TABLE6.items():
        core = _core(recs, ds)
        base = ERA_BASES[model].format(ds=ds)
        cands = {}
        for r in _find(recs, ds, "mrevadv", rf"^mra\d+_255(_[a-z]+)?__{re.escape(base)}__"):
            if core is not None and r.rob(_eps(k)) is not None and r.rob(_eps(2 * k)) is not None:
                cands[r.name] = (r, _compose(r, core, k))
        hit = _closest([(r, [_pct(c["rob_acc_paper"]), _pct(c["nat_acc_paper"])]) for r, c in cands.values()],
                       printed)
        cell = f"{ds} {MODEL_TEXT[model]} {k}/255" + (" (also Table 4)" if (ds, model, k) in TABLE4 else "")
        if hit is None:
            why = "no ERA record with flags at ε and 2ε" if core is not None else "no record of the core model"
            v.add("Table 6", cell, [(None, p) for p in printed], why)
            rows.append([ds, MODEL_TEXT[model], f"{k}/255", "no record", 0] + [None] * 6)
        else:
            (r, ours), c = hit, cands[hit[0].name][1]
            v.add("Table 6", cell, list(zip(ours, printed)), _picked(len(cands)))
            rows.append([ds, MODEL_TEXT[model], f"{k}/255", r.run, len(cands), *ours, _pct(c["rob_acc"]),
                         _pct(c["nat_acc"]), _pct(c["core_rob_acc"]), _pct(c["core_nat_acc"])])
        paper.append(_row_paper(5, [*printed, None, None, None, None]))
    gaps = [(r[5] - r[7], r[6] - r[8]) for r in rows if r[7] is not None]
    text = ("The authors' code composes with a selector that is F's robustness at 2ε, on the clean input too, "
            "and counts a sample it does not select as robust whenever the core model is robust and correct, as "
            "if the selector abstained in the whole ε-ball; nothing guarantees that (an adversary may move x to "
            "where F is selected). The sound count uses the paper's own S_ERI (eq. 12: robustness at ε) with eq. "
            "14's robust selection (robustness at 2ε) and needs F and the core to agree and be robust where the "
            "selection may change in the ball.")
    if gaps:
        text += (f" On the {len(gaps)} cells below the sound R_rob^acc is lower by {min(g[0] for g in gaps):.2f} "
                 f"to {max(g[0] for g in gaps):.2f} points, and the authors' R_nat minus the sound one is "
                 f"{min(g[1] for g in gaps):+.2f} to {max(g[1] for g in gaps):+.2f} points (another selector: "
                 "robustness at 2ε instead of ε).")
    return [_text(text), _table(
        "Tables 6 and 4: 2-compositional models (eq. 15), ERA model F_robust with the robustness selector, core "
        "model on the abstained samples (%). Authors' count: the selector is F's robustness at 2ε and the core "
        "is assumed to answer in the whole ball where it does not select (their code; `rob_acc_paper`); sound: "
        "S = S_ERI at ε, robust selection at 2ε (eq. 14), `composition_metrics`. The paper's ε-composition uses "
        "the ERA model trained at 2ε (its file holds the flags at ε and 2ε); among several runs the one closest "
        "to the paper's numbers is shown",
        ["dataset", "F_robust base", "ε", "record (run)", "runs", "R_rob^acc % (authors)", "R_nat % (authors)",
         "R_rob^acc % (sound)", "R_nat % (sound)", "core R_rob^acc %", "core R_nat %"], rows, paper)]


def _table23(recs: list[Rec], v: Verdicts) -> list[dict]:
    rows, paper = [], []
    for (model, ft, sigma), printed in TABLE23.items():
        base = SMOOTH_BASES[model]
        if ft == "cra":
            fam, pat = "revcertrad", rf"^rcr{sigma:g}__{re.escape(base)}__"
        elif model == "cohen" and sigma == 0.12:
            fam, pat = "augm", rf"^{re.escape(base)}__"          # the published σ = 0.12 model itself
        else:
            fam, pat = "augm", rf"^{re.escape(base.split('_cifar10')[0])}_cifar10_gaussaugm{sigma:g}ft__"
        cands = []
        for r in recs:
            if r.family == fam and r.sigma is not None and math.isclose(r.sigma, sigma) and re.match(pat, r.run):
                m = _smooth(r)
                cands.append((r, [_pct(m[key]) for key in ("rob_acc", "rob_inacc", "rob_sel", "sel_rob_acc")]))
        hit = _closest(cands, printed)
        label = "Cohen et al. (ResNet-110)" if model == "cohen" else "Sehwag et al. (ResNet-18)"
        head = [label, "L_noise" if ft == "noise" else "L_CRA", f"{SMOOTHING_EPS[sigma]:g} (σ={sigma:g})"]
        if hit is None:
            v.add("Tables 2, 3", f"{label} {ft} σ={sigma:g}", [(None, p) for p in printed],
                  "no record of this model")
            rows.append(head + ["no record", 0, None, None, None, None])
        else:
            v.add("Tables 2, 3", f"{label} {ft} σ={sigma:g}", list(zip(hit[1], printed)), _picked(len(cands)))
            rows.append(head + [hit[0].run, len(cands), *hit[1]])
        paper.append(_row_paper(5, list(printed)))
    return [_table("Tables 2 and 3: randomized smoothing (500 test samples, N0 = 100, N = 100,000), ℓ2 radius ε; "
                   "robust = certified radius ≥ ε (S_CRI, Section 5), %",
                   ["pre-trained model", "fine-tuning", "ε (σ)", "record (run)", "runs", "R_rob^acc %",
                    "R_rob^¬acc %", "R_rob^sel %", "R_rob^acc of (G, S_CRI) %"], rows, paper)]


def _claims(recs: list[Rec], v: Verdicts) -> list[dict]:
    """Numbers the text states about single models (Sec. 7.1, A.5), against the closest run."""
    rows, paper = [], []
    for where, what, ds, fam, pat, k, printed in TEXT_CLAIMS:
        cands = [(r, [_pct(_part(r, k)[m]) for m in printed]) for r in _find(recs, ds, fam, pat)
                 if r.rob(_eps(k)) is not None]
        hit = _closest(cands, printed.values())
        ours = hit[1] if hit else [None] * len(printed)
        v.add("Text", f"{where} {what}", list(zip(ours, printed.values())),
              _picked(len(cands)) if hit else "no record of this model")
        rows.append([where, what, hit[0].run if hit else "no record", len(cands), *ours])
        paper.append(_row_paper(4, list(printed.values())))
    return [_table("Numbers stated in the text (R_rob^acc, R_rob^¬acc, %), against the closest run",
                   ["where", "model", "record (run)", "runs", "R_rob^acc %", "R_rob^¬acc %"], rows, paper)]


def _all_models(recs: list[Rec]) -> list[dict]:
    rows = []
    for r in _robust_models(recs) + [x for x in recs if x.family == "std" and x.sigma is None]:
        for k in r.ks():
            m = _part(r, k)
            keys = ("nat_acc", "rob_acc", "rob_inacc", "rob_sel_paper", "sel_rob_acc_paper", "rob_sel",
                    "sel_rob_acc")
            rows.append([r.dataset, r.family, r.run, f"{k}/255"] + [_pct(m.get(key)) for key in keys])
    return [_table("Every ℓ∞ record (the points of Fig. 2/7 and 3/8): partition and the abstain model (F, S_ERI) "
                   "at each ε the file holds, %. Families: adv = TRADES, mrevadv = ERA, grevadv = DGA, std = "
                   "core. Sound robust selection (2ε) only where the file holds the 2ε flag",
                   ["dataset", "family", "record (run)", "ε", "R_nat %", "R_rob^acc %", "R_rob^¬acc %",
                    "R_rob^sel % (authors, ε)", "R_rob^acc of (F,S) % (authors)", "R_rob^sel % (sound, 2ε)",
                    "R_rob^acc of (F,S) % (sound)"], rows)]


def _all_compositions(recs: list[Rec]) -> list[dict]:
    rows, without, gaps = [], 0, []
    for r in _robust_models(recs):
        core = _core(recs, r.dataset)
        for k in r.ks() if core is not None else []:
            if core.rob(_eps(k)) is None:
                continue
            c = _compose(r, core, k)
            if "rob_acc" not in c:
                without += 1
                continue
            gaps.append(c["rob_acc_paper"] - c["rob_acc"])
            rows.append([r.dataset, r.family, r.run, f"{k}/255"] + [_pct(c[key]) for key in (
                "nat_acc_paper", "rob_acc_paper", "nat_acc", "rob_acc")] + [_pct(-gaps[-1])])
    text = (f"Every composition (points of Fig. 4/9) of a TRADES, ERA or DGA record with the dataset's core "
            f"model (Table 7) at an ε where the record holds the flags at ε and 2ε: {len(rows)}. ")
    if gaps:
        g = np.asarray(gaps) * 100          # authors' count minus the sound one, in points
        below, above = int(np.sum(g > 1e-9)), int(np.sum(g < -1e-9))
        text += (f"The sound robust accuracy is below the authors' count in {below} of them (by up to "
                 f"{max(g.max(), 0):.2f} points, mean {g.mean():.2f}), above it in {above}. ")
    text += (f"{without} more (record, ε) pairs have no 2ε flag in the record: neither eq. 14's robust selection "
             "nor the authors' 2ε count can be computed there (results.json gives the authors' count with the "
             "selector at ε, `selector_paper_2eps` = 0, for those).")
    return [_text(text), _table(
        "Every composition with both counts (%): authors' (selector = robust at 2ε, core assumed robust where "
        "not selected) and sound (S_ERI at ε, robust selection at 2ε)",
        ["dataset", "family", "F_robust record (run)", "ε", "R_nat % (authors)", "R_rob^acc % (authors)",
         "R_nat % (sound)", "R_rob^acc % (sound)", "Δ R_rob^acc (sound − authors)"], rows)]


def _summary(v: Verdicts) -> dict:
    ok = [c for c in v.cells if c[2] is True]
    bad = [c for c in v.cells if c[2] is False]
    none = [c for c in v.cells if c[2] is None]
    lines = [f"**Summary.** Of {len(v.cells)} cells of the paper's Tables 1–9 and text that name a model, the "
             f"records reproduce {len(ok)} (ours rounds to the printed number), {len(bad)} differ and "
             f"{len(none)} have no record."]
    by_table: dict[str, list[bool | None]] = defaultdict(list)
    for t, _, o, _ in v.cells:
        by_table[t].append(o)
    lines.append("Per table: " + "; ".join(
        f"{t}: {s.count(True)} reproduced, {s.count(False)} differ, {s.count(None)} no record"
        for t, s in by_table.items()) + ".")
    if bad:
        lines.append("Not reproduced: " + "; ".join(f"{t} {c} ({w or 'the record gives another number'})"
                                                   for t, c, _, w in bad) + ".")
    if none:
        lines.append("No record: " + "; ".join(f"{t} {c}" for t, c, _, _ in none) + ".")
    picked = [c for c in ok if c[3].startswith("closest")]
    if picked:
        lines.append(f"{len(picked)} reproduced cells come from a run chosen among several (the paper does not "
                     "say which run it reports; the closest one is shown).")
    return _text(" ".join(lines))


STAGE = Stage(name=NAME, title=TITLE, depends=DEPENDS, config=config, run=run, report=report,
              scale="paper", expected_seconds=EXPECTED_SECONDS, missing_data=missing_data)

__all__ = ["NAME", "TITLE", "DEPENDS", "STAGE", "config", "run", "report", "missing_data"]

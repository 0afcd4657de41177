"""Paper-scale stages of ``abstain reproduce --scale paper`` (CIFAR-10/100, MTSD).

Each stage is a group of experiment configs from ``configs/`` (TOML, :mod:`abstain.config`):
for every config it fine-tunes the published or pre-trained model named by ``[model] init``
with :func:`abstain.train.train_from_config` (checkpoints under ``DIR/<stage>/work/<variant>-s<seed>``,
resumed after an interruption), then evaluates it on the test set with 40-step APGD at the
config's ε and at 2ε (:func:`abstain.evaluation.evaluate`) and writes the per-sample records
``records/<variant>-s<seed>.csv``. A config whose ``[train] epochs`` is 0 is evaluated as
loaded (the published models of Tables 1, 8, 9).

From the records the report computes, per variant, the four-way partition at ε (eq. 2, 3;
Tables 1, 8, 9), the robustness-indicator abstain model (F, S_ERI) (Section 5; Table 5: the
selector is robustness at ε, robust selection needs robustness at 2ε, eq. 14), and, where the
stage has a standard-trained core model, the 2-compositional model of eq. 15 (Tables 4, 6).

Data lives under ``--data-root`` (checked before anything runs, :func:`missing_data`):
``cifar-10-batches-py/`` and ``cifar-100-python/`` (the python versions from the Toronto
site), ``mtsd/`` (written by ``abstain data mtsd`` from the Mapillary download) and the
published checkpoints named by the configs' ``[model] init`` (relative paths are taken
relative to the data root).
"""
from __future__ import annotations

import json
import os
import tomllib
from functools import partial
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .. import data as data_mod
from .. import evaluation, records  # evaluation.evaluate is looked up at call time (tests spy on it)
from ..authors_records import eps_label
from ..config import configs_dir, validate
from ..data import balanced_subset
from ..errors import DataError
from ..metrics import mean_std
from ..train import build_model, train_from_config
from .base import Stage

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MTSD_URL = "https://www.mapillary.com/dataset/trafficsign"
ROBUSTBENCH_URL = "https://github.com/RobustBench/robustbench"

# dataset -> (path under the data root, files that must exist there, what to download)
DATASETS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",),
                f"CIFAR-10, python version: download {CIFAR10_URL} and extract it into the data root"),
    "cifar100": ("cifar-100-python", ("train", "test"),
                 f"CIFAR-100, python version: download {CIFAR100_URL} and extract it into the data root"),
    "mtsd": ("mtsd", (),
             f"Mapillary Traffic Sign Dataset (fully annotated set, {MTSD_URL}), converted with "
             "`abstain data mtsd --annotations DIR --images DIR --out <data-root>/mtsd`"),
}
_DATASET_DIRS = {sub for sub, _, _ in DATASETS.values()}


def _checkpoint_hint(init: str, dataset: str | None = None) -> str:
    """What to do about a missing ``[model] init``: train it with the config that documents
    ``--out <data-root>/<init>``, else get the published checkpoint from RobustBench."""
    for f in sorted(configs_dir().glob("*.toml")):
        try:
            out = tomllib.loads(f.read_text()).get("experiment", {}).get("output")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, AttributeError):
            continue
        if isinstance(out, str) and _strip_up(out) == _strip_up(init):
            return (f"checkpoint directory of the pre-trained model: train it first with "
                    f"`abstain train --config configs/{f.name} --out <data-root>/{out} "
                    "--set data.root=<data-root>`")
    name = Path(init).stem
    return (f"published checkpoint {Path(init).name}: from the RobustBench model zoo "
            f"({ROBUSTBENCH_URL}), e.g. `robustbench.utils.load_model(model_name='{name}', "
            f"dataset='{dataset or '...'}', threat_model='Linf')` saves it as "
            f"models/{dataset or '<dataset>'}/Linf/{name}.pt; copy that file to this path")


def _strip_up(p: str) -> Path:
    """A relative path without its leading ``..`` parts (taken relative to the data root)."""
    parts = Path(p).parts
    while parts and parts[0] in ("..", "."):
        parts = parts[1:]
    return Path(*parts) if parts else Path(".")


def _is_core(toml: Mapping[str, Any]) -> bool:
    """The config of the core model F_core of eq. 15 (``[experiment] role = "core"``)."""
    return toml.get("experiment", {}).get("role") == "core"


@dataclass
class PaperStage:
    """One paper-scale stage: the configs matching ``patterns`` under ``configs/``."""

    NAME: str
    TITLE: str
    patterns: tuple[str, ...]
    datasets: tuple[str, ...] = ()              # read whatever the configs say, at least these
    DEPENDS: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    steps: int = 40
    n_test: int | None = None                    # None: the whole test set
    demo_n_test: int = 500
    paper: Callable[[Mapping[str, Any]], Mapping[str, float] | None] | None = None
    paper_compose: Callable[[Mapping[str, Any]], Mapping[str, float] | None] | None = None
    description: str = ""

    def as_stage(self) -> Stage:
        return Stage(name=self.NAME, title=self.TITLE, depends=self.DEPENDS, config=self.config,
                     run=self.run, report=self.report, scale="paper",
                     expected_seconds=(3600.0, 36000.0), missing_data=self.missing_data,
                     trains_large_models=True)

    # ---------------------------------------------------------------- config
    def config(self, scale: str, demo: bool) -> dict:
        """The matching TOML files (their parsed contents and text, so an edit invalidates the
        cache), in training order (a config whose ``init`` is another one's run comes after
        it), the evaluation settings and the seeds."""
        root = configs_dir()
        files = sorted({p for pat in self.patterns for p in root.glob(pat)})
        variants: dict[str, Any] = {}
        for p in files:
            text = p.read_text()
            variants[p.stem] = {"file": str(p), "toml": tomllib.loads(text), "text": text}
        for name, v in variants.items():
            v["after"] = v["toml"].get("experiment", {}).get("init_from")
            if v["after"] is not None and v["after"] not in variants:
                raise ValueError(f"{v['file']}: [experiment] init_from = {v['after']!r} is not a config "
                                 f"of stage {self.NAME} ({', '.join(variants)})")
        ordered: dict[str, Any] = {}

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if name in ordered:
                return
            if name in chain:
                raise ValueError(f"configs initialise from each other in a cycle: {' -> '.join(chain)}")
            after = variants[name]["after"]
            if after:
                visit(after, chain + (name,))
            ordered[name] = variants[name]

        for name in variants:
            visit(name, ())
        eps = sorted({float(v["toml"].get("loss", {}).get("eps") or 0) for v in variants.values()} - {0.0})
        return {"variants": ordered, "seeds": list(self.seeds[:1] if demo else self.seeds),
                "steps": self.steps, "n_test": self.demo_n_test if demo else self.n_test,
                "attack": "apgd-ce",    # the paper's protocol: every number here is compared with it
                "norm": "linf", "eps": eps}

    # ---------------------------------------------------------------- data check
    def missing_data(self, config: Mapping[str, Any], data_root: Path | None) -> list[str]:
        """Each missing dataset path or checkpoint under ``data_root``, with what to download."""
        lines: list[str] = []
        for path, what in self.required(config, data_root):
            if _exists(path):
                continue
            # a whole dataset directory missing: name the directory once, not each file in it
            top = path.parent if not path.parent.exists() and path.parent.name in _DATASET_DIRS else path
            line = f"{top}: {what}"
            if line not in lines:
                lines.append(line)
        return lines

    def required(self, config: Mapping[str, Any], data_root: Path | None) -> list[tuple[Path, str]]:
        root = Path(data_root) if data_root is not None else Path("<data-root>")
        need: list[tuple[Path, str]] = []
        names = list(self.datasets) + [v["toml"].get("data", {}).get("name") for v in config["variants"].values()]
        for name in dict.fromkeys(names):
            if name in DATASETS:
                sub, files, what = DATASETS[name]
                need += [(root / sub / f, what) for f in files] or [(root / sub, what)]
        if not config["variants"]:
            need.append((configs_dir() / self.patterns[0],
                         "the experiment configs of this stage (configs/ of the repository)"))
        for v in config["variants"].values():
            init = v["toml"].get("model", {}).get("init")
            if init and not v.get("after") and not Path(init).is_absolute():
                need.append((root / _strip_up(init),
                             _checkpoint_hint(init, v["toml"].get("data", {}).get("name"))))
        return list(dict.fromkeys(need))

    # ---------------------------------------------------------------- run
    def run(self, ctx: Any, config: dict) -> dict:
        """Train (or resume) every variant in order, evaluate it with APGD at ε and 2ε (a core
        model at every ε of the stage) and write ``records/<variant>-s<seed>.csv``."""
        root = Path(ctx.data_root) if ctx.data_root is not None else None
        results: dict[str, Any] = {}
        for variant, v in config["variants"].items():
            per_seed = []
            for seed in config["seeds"]:
                raw = {k: dict(sec) for k, sec in v["toml"].items()}
                dname = raw["data"]["name"]
                if dname in DATASETS and root is not None:
                    raw["data"]["root"] = str(root / DATASETS[dname][0]) if dname == "mtsd" else str(root)
                elif raw["data"].get("root") and not Path(raw["data"]["root"]).is_absolute():
                    raw["data"]["root"] = str(Path(v["file"]).parent / raw["data"]["root"])
                init = raw.get("model", {}).get("init")
                if v.get("after"):
                    raw["model"]["init"] = str(ctx.work / f"{v['after']}-s{seed}")
                elif init and not Path(init).is_absolute():
                    base = root if root is not None else Path(v["file"]).parent
                    raw["model"]["init"] = str(base / (_strip_up(init) if root is not None else init))
                raw["train"] = {**raw.get("train", {}), "seed": seed}
                cfg = validate(raw)
                own = float(cfg["loss"]["eps"] or 0.0)
                eps = [own] if own > 0 else list(config["eps"])
                if not eps:
                    raise ValueError(f"{v['file']}: no [loss] eps here or in the other configs of "
                                     f"stage {self.NAME}, so no threat model to evaluate")
                test = data_mod.load(dname, "test", root=cfg["data"]["root"], seed=seed)
                if cfg["train"]["epochs"] == 0:
                    model, _ = build_model(cfg, test.num_classes, tuple(test.input_shape))
                else:
                    model, _ = train_from_config(cfg, ctx.work / f"{variant}-s{seed}", device=ctx.device)
                if config["n_test"] and config["n_test"] < len(test):
                    test = test.subset(balanced_subset(test.y, config["n_test"], test.num_classes, seed))
                res = evaluation.evaluate(model.to(ctx.device), test, eps=eps, norm=cfg["loss"]["norm"],
                                          steps=config["steps"], double_eps=True, device=ctx.device, seed=seed,
                                          attack=config.get("attack", "apgd-ce"),
                                          show_progress=not ctx.quiet)
                cols = {k: val for k, val in res.items() if k != "partition"}
                ctx.write_records(f"{variant}-s{seed}", cols)
                per_seed.append({f"{k}@{e:g}" if len(eps) > 1 else k: m
                                 for e in eps for k, m in _metrics(cols, e).items() if k != "eps"})
            results[variant] = mean_std(per_seed)
        results["meta"] = {"seeds": config["seeds"], "steps": config["steps"], "n_test": config["n_test"],
                           "norm": config["norm"], "eps": config["eps"]}
        return results

    # ---------------------------------------------------------------- report
    def report(self, stage_dir: Path) -> list[dict]:
        """Tables recomputed from ``records/<variant>-s<seed>.csv``; paper numbers beside ours.

        Per variant and ε: the partition (eq. 2, 3) and the S_ERI abstain model (robust
        selection via 2ε, eq. 14). With a core model (standard training, no ε) in the stage:
        each robust variant composed with it (eq. 15, :func:`abstain.metrics.composition_metrics`),
        matched on the records' ``index``.
        """
        stage_dir = Path(stage_dir)
        tomls = self._tomls(stage_dir)
        recs: dict[str, list[tuple[int, dict]]] = {}
        for f in sorted((stage_dir / "records").glob("*-s*.csv")):
            variant, _, seed = f.stem.rpartition("-s")
            recs.setdefault(variant, []).append((int(seed), records.Records.read_csv(f)))
        stage_eps = sorted({float(t.get("loss", {}).get("eps") or 0) for t in tomls.values()} - {0.0})
        keys = ["nat_acc", "rob_acc", "rob_inacc", "nonrob_acc", "nonrob_inacc", "rob_sel", "sel_rob_acc"]
        rows, paper, comp_rows, comp_paper = [], [], [], []
        cores = [v for v in recs if _is_core(tomls.get(v, {}))]
        for variant, runs in recs.items():
            toml = tomls.get(variant, {})
            own = float(toml.get("loss", {}).get("eps") or 0)
            eps_list = [own] if own > 0 else (stage_eps or [_eps_of(runs[0][1])])
            for e in eps_list:
                ms = [_metrics(r, e) for _, r in runs]
                mean = {k: float(np.mean([m[k] for m in ms])) for k in keys}
                rows.append([variant, len(ms), eps_label(e), *[mean[k] for k in keys]])
                ref = self.paper({**toml, "loss": {**toml.get("loss", {}), "eps": e}}) if self.paper else None
                paper.append([None, None, None, *[(ref or {}).get(k) for k in keys]])
                if own <= 0:
                    continue
                for core in cores:
                    cms = []
                    core_runs = dict(recs[core])
                    for seed, r in runs:
                        if seed not in core_runs:
                            continue
                        cms.append(_composition(r, core_runs[seed], e))
                    if not cms:
                        continue
                    ck = ["core_nat_acc", "core_rob_acc", "nat_acc", "rob_acc", "coverage"]
                    cm = {k: float(np.mean([m[k] for m in cms])) for k in ck}
                    comp_rows.append([variant, core, eps_label(e), *[cm[k] for k in ck],
                                      cm["nat_acc"] - cm["core_nat_acc"], cm["rob_acc"] - cm["core_rob_acc"]])
                    cref = self.paper_compose({**toml, "loss": {**toml.get("loss", {}), "eps": e}}) \
                        if self.paper_compose else None
                    cref = cref or {}
                    comp_paper.append([None, None, None, *[cref.get(k) for k in ck], None, None])
        blocks: list[dict] = [{"kind": "text", "text": self.description or self.TITLE}]
        if rows:
            blocks.append({"kind": "table",
                           "caption": "Partition at ε and the robustness-indicator abstain model "
                                      "(S_ERI; robust selection via 2ε), mean over seeds, fractions",
                           "columns": ["variant", "seeds", "ε", *keys], "rows": rows,
                           "paper": paper if any(any(c is not None for c in r) for r in paper) else None})
        if comp_rows:
            blocks.append({"kind": "table",
                           "caption": "2-compositional models (eq. 15): robust model with S_ERI, core "
                                      "model on abstained samples; gains over the core alone",
                           "columns": ["robust model", "core", "ε", "core nat_acc", "core rob_acc",
                                       "nat_acc", "rob_acc", "coverage", "Δ nat_acc", "Δ rob_acc"],
                           "rows": comp_rows,
                           "paper": comp_paper if any(any(c is not None for c in r) for r in comp_paper)
                           else None})
        return blocks

    @staticmethod
    def _tomls(stage_dir: Path) -> dict[str, Mapping[str, Any]]:
        try:
            res = json.loads((stage_dir / "results.json").read_text())
            return {k: v["toml"] for k, v in res["meta"]["config"]["variants"].items()}
        except (OSError, KeyError, ValueError, TypeError, AttributeError):
            return {}


def _exists(p: Path) -> bool:
    return p.exists() and (not p.is_dir() or any(p.iterdir()))


def _eps_of(cols: Mapping[str, Any]) -> float:
    eps = records.as_records(cols).radii()
    if not eps:
        raise ValueError("records without robust@<eps> columns")
    return eps[0]


def _metrics(cols: Mapping[str, Any], eps: float) -> dict[str, float]:
    """Partition at ε (eq. 2, 3) and S_ERI abstain metrics (eq. 14 with the 2ε check)."""
    rec = records.as_records(cols)
    try:
        a = rec.indicator_metrics(eps)
        return {"eps": eps, **rec.partition(eps), "rob_sel": a["rob_sel"], "sel_rob_acc": a["sel_rob_acc"]}
    except KeyError as e:
        raise ValueError(str(e)) from None


def _composition(robust: records.Records, core: records.Records, eps: float) -> dict[str, float]:
    """The composition (eq. 15) of ``robust`` (S_ERI) with ``core``, matched on ``index``."""
    try:
        return robust.composition(core, eps)
    except DataError:
        raise ValueError("core records lack a sample of the robust model's: evaluated on another subset") from None
    except KeyError as e:
        raise ValueError(str(e)) from None


def _table5(toml: Mapping[str, Any]) -> dict[str, float] | None:
    """Paper Table 5 (ResNet-50 of Zhang et al., CIFAR-10), as fractions."""
    loss = toml.get("train", {}).get("loss")
    aa = toml.get("data", {}).get("augment", "none") == "autoaugment"
    eps = toml.get("loss", {}).get("eps")
    if loss not in ("era", "dga") or eps is None:
        return None
    k = round(float(eps) * 255)
    table = {("era", False, 1): (86.31, 96.63), ("dga", False, 1): (84.98, 94.92),
             ("era", True, 1): (83.44, 97.47), ("dga", True, 1): (80.72, 96.56),
             ("era", False, 2): (78.24, 97.33), ("dga", False, 2): (75.73, 96.22),
             ("era", True, 2): (74.63, 98.31), ("dga", True, 2): (73.59, 97.88)}
    v = table.get((loss, aa, k))
    return None if v is None else {"rob_sel": v[0] / 100, "sel_rob_acc": v[1] / 100}


# Table 8 (CIFAR-10 partition, %): model key -> eps*255 -> (¬r¬a, r¬a, ¬ra, ra)
_TABLE8 = {
    "zhang": {1: (5.17, 4.64, 6.18, 84.01), 2: (7.94, 4.13, 10.38, 77.55),
              4: (13.42, 3.31, 17.19, 66.08), 8: (18.17, 2.64, 29.79, 49.40)},
    "carmon": {1: (3.33, 3.61, 3.32, 89.74), 2: (7.38, 2.40, 3.20, 87.02),
               4: (8.23, 1.05, 16.87, 73.85), 8: (9.55, 0.76, 27.82, 61.87)},
    "gowal": {1: (2.85, 2.88, 3.87, 90.40), 2: (4.86, 2.25, 6.74, 86.15),
              4: (6.64, 0.87, 15.96, 76.53), 8: (9.21, 1.31, 23.78, 65.70)},
}
# Table 9 (CIFAR-100 partition, %), Rebuffi et al.
_TABLE9 = {"rebuffi": {1: (15.20, 15.24, 7.75, 61.81), 2: (32.75, 8.71, 5.11, 53.43),
                       4: (30.57, 4.34, 23.16, 41.93), 8: (33.70, 3.91, 26.66, 35.73)}}


def _partition_paper(table: Mapping[str, Mapping[int, tuple[float, ...]]]):
    """The paper's partition of a config's model from ``table`` (a picklable function)."""
    return partial(_partition_lookup, table)


def _partition_lookup(table: Mapping[str, Mapping[int, tuple[float, ...]]],
                      toml: Mapping[str, Any]) -> dict[str, float] | None:
    init = str(toml.get("model", {}).get("init") or "").lower()
    eps = toml.get("loss", {}).get("eps")
    if toml.get("train", {}).get("loss") not in (None, "trades", "standard") or eps is None:
        return None
    for key, by_eps in table.items():
        if key in init and round(float(eps) * 255) in by_eps:
            nn_, ri, nra, ra = by_eps[round(float(eps) * 255)]
            return {"nonrob_inacc": nn_ / 100, "rob_inacc": ri / 100, "nonrob_acc": nra / 100,
                    "rob_acc": ra / 100, "nat_acc": (nra + ra) / 100}
    return None


def _mtsd_paper(toml: Mapping[str, Any]) -> dict[str, float] | None:
    """MTSD numbers of the paper: Table 7 (the core model), Table 1 (robust inaccuracy of the
    TRADES ResNet-50 of Zhang et al. at 1/255)."""
    eps = toml.get("loss", {}).get("eps")
    k = round(float(eps) * 255) if eps else None
    loss = toml.get("train", {}).get("loss", "standard")
    if loss == "standard":
        rob = {1: 0.7466, 2: 0.4071, 4: 0.0751}.get(k)
        return {"nat_acc": 0.9379, **({"rob_acc": rob} if rob is not None else {})}
    if loss == "trades" and k == 1:
        return {"rob_inacc": 0.039}
    return None


def _mtsd_compose_paper(toml: Mapping[str, Any]) -> dict[str, float] | None:
    """Paper Table 6, MTSD (ResNet-50, F_robust fine-tuned with ERA; core of Table 7)."""
    if toml.get("train", {}).get("loss") != "era":
        return None
    k = round(float(toml.get("loss", {}).get("eps") or 0) * 255)
    ref = {1: (0.845, 0.941, 0.7466), 2: (0.699, 0.940, 0.4071)}.get(k)
    if ref is None:
        return None
    return {"rob_acc": ref[0], "nat_acc": ref[1], "core_nat_acc": 0.9379, "core_rob_acc": ref[2]}


PAPER_STAGES: dict[str, PaperStage] = {s.NAME: s for s in (
    PaperStage("cifar10-table5", "cifar10-table5 — ERA vs DGA fine-tunes of the TRADES ResNet-50, "
               "S_ERI abstain models (paper Table 5)", ("cifar10-table5*.toml",), paper=_table5,
               datasets=("cifar10",),
               description="The TRADES-pretrained (8/255) ResNet-50 (`configs/cifar10-pretrain-trades-"
                           "resnet50-eps8.toml`, trained beforehand into `<data-root>/models/`) fine-tuned "
                           "with ERA and DGA at 1/255 and 2/255, with and without AutoAugment; "
                           "40-step APGD at ε and 2ε on the test set."),
    PaperStage("cifar10-table4", "cifar10-table4 — TRADES and ERA fine-tunes of the RobustBench "
               "WideResNet-28-10 models (paper Tables 1, 4, 8)", ("cifar10-table4*.toml",),
               paper=_partition_paper(_TABLE8), datasets=("cifar10",),
               description="The WideResNet-28-10 models of Carmon et al. (2019) and Gowal et al. (2020) "
                           "(RobustBench, 8/255) fine-tuned with TRADES (the paper's Table 8 partition) "
                           "and with ERA at 1/255 and 2/255; 40-step APGD on the test set."),
    PaperStage("cifar100-table9", "cifar100-table9 — CIFAR-100 partition of the Rebuffi et al. WideResNet-28-10 "
               "and a standard WideResNet-28-10 (paper Table 9)", ("cifar100-table9*.toml",),
               paper=_partition_paper(_TABLE9), datasets=("cifar100",),
               description="The RobustBench WideResNet-28-10 of Rebuffi et al. (2021) for CIFAR-100 (8/255) "
                           "TRADES fine-tuned for 1/255, 2/255 and 4/255 and evaluated as published at 8/255, "
                           "and a standard-trained WideResNet-28-10 (the core, evaluated at every ε); 40-step "
                           "APGD-CE on the test set. The paper's numbers are given for the Rebuffi rows."),
    PaperStage("mtsd", "mtsd — traffic signs: TRADES and ERA ResNet-50 models, the core model and "
               "their compositions (paper Tables 1, 4, 6, 7)",
               ("paper-mtsd-*.toml", "mtsd*.toml"), datasets=("mtsd",),
               paper=_mtsd_paper, paper_compose=_mtsd_compose_paper,
               description="ResNet-50 models on the cropped Mapillary Traffic Sign Dataset (Appendix "
                           "A.1): TRADES from scratch at 1/255 and 2/255, ERA fine-tunes of them, and "
                           "the standard-trained core model; 40-step APGD on the test set."),
)}

STAGES: tuple[Stage, ...] = tuple(s.as_stage() for s in PAPER_STAGES.values())


def required_paths(data_root: str | os.PathLike | None, demo: bool = False) -> list[tuple[Path, str]]:
    """Every (path, what to download) the paper-scale stages read under ``data_root``."""
    out: list[tuple[Path, str]] = []
    for st in PAPER_STAGES.values():
        for p, w in st.required(st.config("paper", demo), Path(data_root) if data_root else None):
            if (p, w) not in out:
                out.append((p, w))
    return out


__all__ = ["PaperStage", "PAPER_STAGES", "STAGES", "required_paths", "DATASETS"]

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

import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

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


def configs_dir() -> Path:
    """The repository's ``configs/`` (editable install), else ``./configs``; ``ABSTAIN_CONFIGS``
    overrides both."""
    env = os.environ.get("ABSTAIN_CONFIGS")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3] / "configs"
    return repo if repo.is_dir() else Path("configs")


def _checkpoint_hint(init: str) -> str:
    name = Path(init).stem
    return (f"published checkpoint {Path(init).name}: from the RobustBench model zoo "
            f"({ROBUSTBENCH_URL}), e.g. `robustbench.utils.load_model(model_name='{name}', "
            "dataset=..., threat_model='Linf')` saves it as models/<dataset>/Linf/"
            f"{name}.pt; copy that file to this path")


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
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- config
    def config(self, scale: str, demo: bool) -> dict:
        """The matching TOML files (their parsed contents, so an edit invalidates the cache),
        the evaluation settings and the seeds."""
        root = configs_dir()
        files = sorted({p for pat in self.patterns for p in root.glob(pat)})
        variants = {}
        for p in files:
            with open(p, "rb") as fh:
                variants[p.stem] = {"file": str(p), "toml": tomllib.load(fh)}
        return {"variants": variants, "seeds": list(self.seeds[:1] if demo else self.seeds),
                "steps": self.steps, "n_test": self.demo_n_test if demo else self.n_test,
                "norm": "linf"}

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
        for name in self.datasets:
            sub, files, what = DATASETS[name]
            need += [(root / sub / f, what) for f in files] or [(root / sub, what)]
        if not config["variants"]:
            need.append((configs_dir() / self.patterns[0],
                         "the experiment configs of this stage (configs/ of the repository)"))
        for v in config["variants"].values():
            toml = v["toml"]
            name = toml.get("data", {}).get("name")
            if name in DATASETS:
                sub, files, what = DATASETS[name]
                need += [(root / sub / f, what) for f in files] or [(root / sub, what)]
            init = toml.get("model", {}).get("init")
            if init and not Path(init).is_absolute():
                need.append((root / init, _checkpoint_hint(init)))
        seen, out = set(), []
        for p, w in need:
            if p not in seen:
                seen.add(p)
                out.append((p, w))
        return out

    # ---------------------------------------------------------------- run
    def run(self, ctx: Any, config: dict) -> dict:
        from .. import data as data_mod
        from ..config import validate
        from ..data import balanced_subset
        from ..evaluation import evaluate
        from ..train import train_from_config

        root = Path(ctx.data_root) if ctx.data_root is not None else None
        results: dict[str, Any] = {}
        for variant, v in config["variants"].items():
            raw = {k: dict(s) for k, s in v["toml"].items()}
            dname = raw["data"]["name"]
            if dname in DATASETS and root is not None:
                raw["data"]["root"] = str(root / DATASETS[dname][0]) if dname == "mtsd" else str(root)
            init = raw.get("model", {}).get("init")
            if init and not Path(init).is_absolute() and root is not None:
                raw["model"]["init"] = str(root / init)
            per_seed = []
            for seed in config["seeds"]:
                raw["train"] = {**raw.get("train", {}), "seed": seed}
                cfg = validate(raw)
                eps = float(cfg["loss"]["eps"] or 0.0)
                if eps <= 0:
                    raise ValueError(f"config {v['file']}: [loss] eps must give the threat model")
                if cfg["train"]["epochs"] == 0:
                    from ..train import build_model

                    probe = data_mod.load(dname, "test", root=cfg["data"]["root"], seed=seed)
                    model, _ = build_model(cfg, probe.num_classes, tuple(probe.input_shape))
                else:
                    model, _ = train_from_config(cfg, ctx.work / f"{variant}-s{seed}", device=ctx.device)
                test = data_mod.load(dname, "test", root=cfg["data"]["root"], seed=seed)
                if config["n_test"] and config["n_test"] < len(test):
                    test = test.subset(balanced_subset(test.y, config["n_test"], test.num_classes, seed))
                res = evaluate(model.to(ctx.device), test, eps=[eps], norm=cfg["loss"]["norm"],
                               steps=config["steps"], double_eps=True, device=ctx.device, seed=seed,
                               show_progress=not ctx.quiet)
                cols = {k: v for k, v in res.items() if k != "partition"}
                ctx.write_records(f"{variant}-s{seed}", cols)
                per_seed.append(_metrics(cols, eps))
            from ..metrics import mean_std

            results[variant] = mean_std(per_seed)
        results["meta"] = {"seeds": config["seeds"], "steps": config["steps"], "n_test": config["n_test"],
                           "norm": config["norm"],
                           "eps": sorted({float(v["toml"].get("loss", {}).get("eps", 0) or 0)
                                          for v in config["variants"].values()})}
        return results

    # ---------------------------------------------------------------- report
    def report(self, stage_dir: Path) -> list[dict]:
        """Tables recomputed from ``records/<variant>-s<seed>.csv``; paper numbers beside ours."""
        from ..records import read_records

        stage_dir = Path(stage_dir)
        by_variant: dict[str, list[dict[str, float]]] = {}
        for f in sorted((stage_dir / "records").glob("*-s*.csv")):
            variant = f.stem.rsplit("-s", 1)[0]
            recs = read_records(f)
            eps = _eps_of(recs)
            by_variant.setdefault(variant, []).append(_metrics(recs, eps))
        keys = ["eps", "nat_acc", "rob_acc", "rob_inacc", "nonrob_acc", "nonrob_inacc", "rob_sel",
                "sel_rob_acc"]
        rows, paper = [], []
        for variant, ms in by_variant.items():
            mean = {k: float(np.mean([m[k] for m in ms])) for k in keys}
            rows.append([variant, len(ms), *[mean[k] for k in keys]])
            ref = self.paper(self._variant_toml(stage_dir, variant)) if self.paper else None
            paper.append([None, None, *[(ref or {}).get(k) for k in keys]])
        blocks: list[dict] = [{"kind": "text", "text": self.description or self.TITLE}]
        if rows:
            blocks.append({"kind": "table",
                           "caption": "Partition at ε and the robustness-indicator abstain model "
                                      "(S_ERI; robust selection via 2ε), mean over seeds, fractions",
                           "columns": ["variant", "seeds", *keys], "rows": rows,
                           "paper": paper if any(any(c is not None for c in r) for r in paper) else None})
        return blocks

    @staticmethod
    def _variant_toml(stage_dir: Path, variant: str) -> Mapping[str, Any]:
        import json

        try:
            res = json.loads((stage_dir / "results.json").read_text())
            return res["meta"]["config"]["variants"][variant]["toml"]
        except (OSError, KeyError, ValueError, TypeError):
            return {}


def _exists(p: Path) -> bool:
    return p.exists() and (not p.is_dir() or any(p.iterdir()))


def _robust_columns(cols: Mapping[str, Any]) -> dict[float, str]:
    return {float(k.split("@", 1)[1]): k for k in cols if k.startswith("robust@")}


def _eps_of(cols: Mapping[str, Any]) -> float:
    eps = sorted(_robust_columns(cols))
    if not eps:
        raise ValueError("records without robust@<eps> columns")
    return eps[0]


def _column_at(cols: Mapping[str, Any], eps: float) -> np.ndarray:
    """The ``robust@<eps>`` column (names carry ε printed with %g, so match to 1e-5 relative)."""
    for e, k in _robust_columns(cols).items():
        if math.isclose(e, eps, rel_tol=1e-5):
            return np.asarray(cols[k]).astype(bool)
    raise ValueError(f"records have no robust@{eps:g} column (have {sorted(_robust_columns(cols))})")


def _metrics(cols: Mapping[str, Any], eps: float) -> dict[str, float]:
    """Partition at ε (eq. 2, 3) and S_ERI abstain metrics (eq. 14 with the 2ε check)."""
    from ..metrics import abstain_metrics, partition

    y, pred = np.asarray(cols["label"]), np.asarray(cols["pred"])
    rob, rob2 = _column_at(cols, eps), _column_at(cols, 2 * eps)
    m = {"eps": eps, **partition(y, pred, rob)}
    a = abstain_metrics(y, pred, rob, rob2, rob)
    m.update({"rob_sel": a["rob_sel"], "sel_rob_acc": a["sel_rob_acc"]})
    return m


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
    def lookup(toml: Mapping[str, Any]) -> dict[str, float] | None:
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
    return lookup


STAGES: dict[str, PaperStage] = {s.NAME: s for s in (
    PaperStage("cifar10-partition", "cifar10-partition — robustness–accuracy partition of TRADES "
               "fine-tuned published models on CIFAR-10 (paper Tables 1, 8)",
               ("cifar10-table8*.toml", "cifar10-partition*.toml"), paper=_partition_paper(_TABLE8),
               datasets=("cifar10",), description="Published CIFAR-10 models (RobustBench), TRADES fine-tuned to each ε, "
                           "evaluated with 40-step APGD on the test set."),
    PaperStage("cifar10-table5", "cifar10-table5 — ERA vs DGA fine-tunes of the TRADES ResNet-50, "
               "S_ERI abstain models (paper Table 5)", ("cifar10-table5*.toml",), paper=_table5, datasets=("cifar10",),
               description="The TRADES-pretrained (8/255) ResNet-50 fine-tuned with ERA and DGA at "
                           "1/255 and 2/255, with and without AutoAugment."),
    PaperStage("cifar10-table4", "cifar10-table4 — ERA fine-tunes of WideResNet-28-10 models and "
               "their compositions (paper Tables 4, 8)", ("cifar10-table4*.toml", "cifar10-wrn*.toml"),
               datasets=("cifar10",), description="WideResNet-28-10 (Carmon et al., Gowal et al.) fine-tuned with TRADES "
                           "and ERA at 1/255 and 2/255."),
    PaperStage("cifar100-partition", "cifar100-partition — robustness–accuracy partition on CIFAR-100 "
               "(paper Table 9)", ("cifar100*.toml",), paper=_partition_paper(_TABLE9),
               datasets=("cifar100",)),
    PaperStage("mtsd", "mtsd — traffic signs: ResNet-50 fine-tunes (paper Tables 4, 6, 7)",
               ("mtsd*.toml",), datasets=("mtsd",),
               description="ResNet-50 on the cropped Mapillary Traffic Sign Dataset (Appendix A.1)."),
)}

# name -> "paper:<attr>" entries for abstain.stages.PAPER_STAGES
TABLE: dict[str, str] = {name: f"paper:{name.replace('-', '_').upper()}" for name in STAGES}
globals().update({name.replace("-", "_").upper(): st for name, st in STAGES.items()})


def required_paths(data_root: str | os.PathLike | None, demo: bool = False) -> list[tuple[Path, str]]:
    """Every (path, what to download) the paper-scale stages read under ``data_root``."""
    out: list[tuple[Path, str]] = []
    for st in STAGES.values():
        for p, w in st.required(st.config("paper", demo), Path(data_root) if data_root else None):
            if (p, w) not in out:
                out.append((p, w))
    return out


__all__ = ["PaperStage", "STAGES", "TABLE", "required_paths", "configs_dir", "DATASETS"]

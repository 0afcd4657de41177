"""Stages ``<study>-compose`` (``digits-compose``, ``mnist1d-compose``): Tables 4/6 and Fig. 4
of the paper in miniature (:mod:`abstain.stages.study`).

2-compositional models H = S·F_robust + (1 − S)·F_core (eq. 15) with the standard-trained
core model of ``<study>-partition`` (``work/std-s<seed>``) and the abstain models of
``<study>-abstain`` (whose per-sample records are reused), against the core alone:

``core``                 F_core alone (R_nat, R_rob^acc at ε);
``robust``               the ERA-fine-tuned model alone;
``compose-eri``          ERA_RI + core (the paper's approach);
``compose-eri-trades``   TRADES_RI + core (and ``compose-eri-dga`` when DGA exists);
``compose-sr``/``-sn``   TRADES_SR / TRADES_SN + core, τ chosen under the budget;
``cascade``              beyond the paper (Section 8, future work): an ordered list of abstain
                         models ending in the core, chosen under the budget of natural-accuracy
                         loss from the Pareto front of the candidates.

Robust accuracy is the sound one of :func:`abstain.metrics.cascade_outcome`: a sample counts
only if neither a selector's decision nor the chosen model's prediction can change in B_ε.
Choices that depend on data (τ of SR/SN, the cascade) are made by 2-fold cross-fitting on
the test subset (:func:`abstain.composition.crossfit_cascade`), never on the sample they score.
The :class:`abstain.composition.Composition` module (ERA + core + S_ERI) is run on the test
subset and its predictions are compared with the records (``module_agreement``).
Records: ``records/compose-s<seed>.csv`` with ``<variant>.pred`` and ``<variant>.rob_acc``
per variant, and ``records/core-s<seed>.csv``. Figure: ``fig4_compositions.png``.
"""
from __future__ import annotations

import re
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import data as data_mod
from .. import records
from .abstain_models import config as abstain_config
from .abstain_models import load_model, model_dir, read_all
from ..composition import Composition, composition_columns, crossfit_cascade
from ..errors import DataError
from ..metrics import mean_std
from ..records import read_records
from ..selectors import RobustnessIndicator
from ..selectors.evaluate import candidate, core_records
from .base import Stage
from .study import Study


_REC = re.compile(r"^compose-s(?P<seed>\d+)\.csv$")
LABELS = {"core": "core alone", "robust": "ERA alone", "compose-eri": "ERA$_{RI}$ + core",
          "compose-eri-trades": "TRADES$_{RI}$ + core", "compose-eri-dga": "DGA$_{RI}$ + core",
          "compose-sr": "TRADES$_{SR}$ + core", "compose-sn": "TRADES$_{SN}$ + core",
          "cascade": "cascade"}


def config(scale: str, demo: bool, study: Study) -> dict:
    """``budget``: the natural-accuracy loss allowed w.r.t. the core (1 point)."""
    cfg: dict[str, Any] = {
        "label": study.label, "steps": 40, "core": "std", "robust": study.compose_robust, "budget": 0.01,
        "max_len": 3, "abstain_stage": study.name("abstain"),
        "sr_taus": [0.5, 0.7, 0.8, 0.9, 0.95, 0.99], "sn_taus": [0.3, 0.5, 0.7, 0.9],
        "verify_module": True,
    }
    if demo:
        cfg.update({"steps": 20})
    up = abstain_config(scale, demo, study)
    cfg["dataset"] = up["dataset"]
    cfg.update({"upstream": up["upstream"], "abstain_steps": up["steps"], "attack": up["attack"]})
    return cfg


def run(ctx: Any, cfg: dict) -> dict:
    t0 = time.perf_counter()
    up = cfg["upstream"]
    eps, norm = up["eps"], up["norm"]
    abstain_dir = ctx.stage_dir(cfg["abstain_stage"])
    abstain = read_all(abstain_dir)
    if not abstain:
        raise DataError(f"no abstain records under {abstain_dir}/records: run {cfg['abstain_stage']} first")
    abstain_steps = int(cfg["abstain_steps"])
    test = data_mod.load(cfg["dataset"], "test")
    per_variant: dict[str, list[dict[str, float]]] = {}
    chosen: dict[str, Any] = {}
    agreement: list[float] = []
    core_used: dict[int, int] = {}
    for seed in up["seeds"]:
        recs = {f"{m}-{k}": per[seed] for (m, k), per in abstain.items() if seed in per}
        if f"{cfg['robust']}-eri" not in recs:
            raise DataError(f"{cfg['abstain_stage']} has no records for {cfg['robust']}-eri seed {seed}")
        index = recs[f"{cfg['robust']}-eri"]["index"].astype(np.int64)
        for name, r in recs.items():
            if not np.array_equal(r["index"], index):
                raise DataError(f"{cfg['abstain_stage']} records {name} s{seed} cover another test subset")
        x = test.x[torch.as_tensor(index)].to(ctx.device)
        y = test.y[torch.as_tensor(index)].to(ctx.device)
        core, core_seed = load_core(ctx.root, up["core_stage"], cfg["core"], seed, ctx.device)
        core_used[seed] = core_seed
        crec = core_records(core, x, y, index, eps=eps, norm=norm, steps=cfg["steps"], seed=seed,
                            attack=cfg["attack"])
        ctx.write_records(f"core-s{seed}", crec)
        yn = crec["label"]
        cpred, crob = crec["pred"], records.flag(crec, records.ROBUST, eps)
        cols: dict[str, Any] = {"index": index, "label": yn, "core.pred": cpred, "core.rob_acc": (cpred == yn) & crob,
                                "core.rob_acc_paper": (cpred == yn) & crob}
        rob_rec = recs[f"{cfg['robust']}-eri"]
        rp = rob_rec["pred"].astype(np.int64)
        cols["robust.pred"] = rp
        cols["robust.rob_acc"] = (rp == yn) & records.flag(rob_rec, records.ROBUST, eps)
        cols["robust.rob_acc_paper"] = cols["robust.rob_acc"]
        cands = []
        for name in sorted(recs):
            model_name, kind = name.rsplit("-", 1)
            if kind == "eri":
                c = candidate(name, kind, recs[name], eps)
                cc = composition_columns(yn, c, cpred, crob)
                variant = "compose-eri" if model_name == cfg["robust"] else f"compose-eri-{model_name}"
                cols[f"{variant}.pred"], cols[f"{variant}.rob_acc"] = cc["h_pred"], cc["h_robust_acc"]
                cols[f"{variant}.rob_acc_paper"] = cc["h_robust_acc_paper"]
                cands.append(c)
            else:
                taus = cfg["sr_taus"] if kind == "sr" else cfg["sn_taus"]
                tc = [candidate(f"{name}@{t:g}", kind, recs[name], eps, t) for t in taus]
                out = crossfit_cascade(yn, tc, cpred, crob, budget=cfg["budget"], max_len=1, seed=seed)
                cols[f"compose-{kind}.pred"], cols[f"compose-{kind}.rob_acc"] = out["h_pred"], out["h_robust_acc"]
                cols[f"compose-{kind}.rob_acc_paper"] = out["h_robust_acc_paper"]
                chosen[f"compose-{kind}-s{seed}"] = out["chosen"]
                cands += tc
        out = crossfit_cascade(yn, cands, cpred, crob, budget=cfg["budget"], max_len=cfg["max_len"], seed=seed)
        cols["cascade.pred"], cols["cascade.rob_acc"], cols["cascade.fold"] = out["h_pred"], out["h_robust_acc"], out["fold"]
        cols["cascade.rob_acc_paper"] = out["h_robust_acc_paper"]
        chosen[f"cascade-s{seed}"] = out["chosen"]
        ctx.write_records(f"compose-s{seed}", cols)
        if cfg.get("verify_module", True):
            robust = load_model(ctx.root, up["stage"], cfg["robust"], seed, ctx.device)
            sel = RobustnessIndicator(robust, eps=eps, norm=norm, steps=abstain_steps, seed=seed,
                                      attack=cfg["attack"])
            live = Composition(robust, core, sel).predict(x).cpu().numpy()
            agreement.append(float(np.mean(live == cols["compose-eri.pred"])))
        for v in variants_of(cols):
            per_variant.setdefault(v, []).append(metrics_of(cols, v))
    results: dict[str, Any] = {v: mean_std(ms) for v, ms in per_variant.items()}
    figure(ctx.out, results, eps, cfg["label"])
    results["meta"] = {"eps": eps, "norm": norm, "seeds": up["seeds"], "budget": cfg["budget"],
                       "steps": cfg["steps"], "samples": int(len(index)),
                       "subset": f"the test subset of {cfg['abstain_stage']} (class-balanced, seed 0)",
                       "cascade_chosen": chosen, "module_agreement": agreement,
                       "core_seed": {str(k): v for k, v in core_used.items()},
                       "robust_accuracy": "sound: selector decision and chosen prediction fixed in B_eps",
                       "choice": "tau and cascade by 2-fold cross-fitting on the test subset",
                       "seconds": time.perf_counter() - t0}
    return results


def load_core(root: Path, stage: str, variant: str, seed: int, device: Any):
    """The core model ``<stage>/work/<variant>-s<seed>`` (``<study>-partition``), which may
    train fewer seeds than ``<study>-finetune``: then every composition uses the core of its
    smallest seed (the core is a fixed, given accurate model). Returns (model, its seed)."""
    model = load_model(root, stage, variant, seed, device)
    if model is not None:
        return model, seed
    work = Path(root) / stage / "work"
    seeds = sorted(int(d.name.rsplit("-s", 1)[1]) for d in work.glob(f"{variant}-s*")
                   if d.name.rsplit("-s", 1)[1].isdigit() and (d / "meta.json").is_file()) if work.is_dir() else []
    if not seeds:
        raise DataError(f"missing core model {model_dir(root, stage, variant, seed)}")
    return load_model(root, stage, variant, seeds[0], device), seeds[0]


def variants_of(cols: dict[str, Any]) -> list[str]:
    return [k[: -len(".rob_acc")] for k in cols if k.endswith(".rob_acc")]


def metrics_of(cols: dict[str, Any], variant: str) -> dict[str, float]:
    y = np.asarray(cols["label"])
    pred = np.asarray(cols[f"{variant}.pred"])
    out = {"nat_acc": float(np.mean(pred == y)),
           "rob_acc": float(np.mean(np.asarray(cols[f"{variant}.rob_acc"]).astype(bool)))}
    if f"{variant}.rob_acc_paper" in cols:
        out["rob_acc_paper"] = float(np.mean(np.asarray(cols[f"{variant}.rob_acc_paper"]).astype(bool)))
    return out


def figure(stage_dir: Path, results: dict[str, Any], eps: float, label: str) -> Path:
    from ..selectors.plots import composition_plot  # noqa: PLC0415  heavy: matplotlib, figures only

    pts = {LABELS.get(v, v): (m["nat_acc"], m["rob_acc"]) for v, m in results.items()
           if v not in ("core", "meta") and isinstance(m, dict) and "nat_acc" in m}
    core = results["core"]
    return composition_plot(pts, (core["nat_acc"], core["rob_acc"]), Path(stage_dir) / "fig4_compositions.png",
                            title=f"{label}, $\\ell_\\infty$ ε={eps:g}: compositions vs core (Fig. 4)")


def report(stage_dir: Path, study: Study) -> list[dict]:
    """Table recomputed from ``records/compose-s<seed>.csv``."""
    stage_dir = Path(stage_dir)
    per_seed = {}
    for path in sorted((stage_dir / "records").glob("compose-s*.csv")):
        m = _REC.match(path.name)
        if m:
            per_seed[int(m["seed"])] = read_records(path)
    if not per_seed:
        return [{"kind": "text", "text": "no composition records found"}]
    variants = variants_of(next(iter(per_seed.values())))
    res = {v: mean_std([metrics_of(c, v) for c in per_seed.values()]) for v in variants}
    core = res["core"]
    rows = []
    for v in variants:
        m = res[v]
        rows.append([v, round(100 * m["nat_acc"], 2), round(100 * (m["nat_acc"] - core["nat_acc"]), 2),
                     round(100 * m["rob_acc"], 2), round(100 * (m["rob_acc"] - core["rob_acc"]), 2),
                     round(100 * m.get("rob_acc_paper", float("nan")), 2)])
    blocks: list[dict] = [
        {"kind": "heading", "text": "Boosting robustness without accuracy loss (Tables 4/6, Fig. 4)"},
        {"kind": "text", "text": (
            f"{study.label}, seeds {sorted(per_seed)}, {len(next(iter(per_seed.values()))['label'])} test samples. "
            "Sound robust accuracy: a sample counts only if neither the selector's decision nor the chosen "
            "model's prediction can change in the ε-ball (S_ERI robust selection attacked at 2ε). τ of SR/SN "
            "and the cascade are chosen by 2-fold cross-fitting under a 1-point natural-accuracy budget. "
            "Percentages, mean over seeds; Δ against the core alone. The last column is the authors' metric "
            "(reference code): robustly selected → F_robust's robust accuracy, otherwise the core's; it assumes "
            "the selector cannot be flipped to select, is not sound, and is shown for comparison only.")},
        {"kind": "table", "caption": "Compositions vs the core: R_nat, ΔR_nat, R_rob^acc (sound), ΔR_rob^acc, "
                                      "R_rob^acc as the paper's code counts it (%)",
         "columns": ["variant", "R_nat", "ΔR_nat", "R_rob^acc", "ΔR_rob^acc", "R_rob^acc (paper's count)"],
         "rows": rows, "paper": None},
    ]
    if (stage_dir / "fig4_compositions.png").is_file():
        blocks.append({"kind": "image", "path": "fig4_compositions.png",
                       "caption": "Fig. 4: natural vs robust accuracy of 2-compositional models and the "
                                  "cascade against the core alone"})
    return blocks


def make_stage(study: Study) -> Stage:
    return Stage(name=study.name("compose"),
                 title=f"{study.name('compose')} — 2-compositional models and cascades vs the core "
                       "(paper Tables 4, 6)",
                 depends=(study.name("partition"), study.name("finetune"), study.name("abstain")),
                 config=partial(config, study=study), run=run, report=partial(report, study=study),
                 expected_seconds=study.expected["compose"])

"""Stages ``<study>-abstain`` (``digits-abstain``, ``mnist1d-abstain``): Fig. 3 and Fig. 6 of
the paper in miniature (:mod:`abstain.stages.study`).

Abstain models (F, S) built from the fine-tuned models of ``<study>-finetune``
(``work/{trades,era,dga}-s<seed>/``; ε, norm and seeds from its configuration):

* robustness indicators S_ERI (eq. 12) of the TRADES-, ERA- (and DGA-) fine-tuned models
  (TRADES_RI, ERA_RI): selection = robustness in B_ε, robust selection = robustness in B_2ε
  (Section 5), 40-step APGD (``is_robust``);
* softmax response S_SR (eq. 16) of the TRADES model, attacked with APGD (minimising the
  max-softmax) and APGDconf (eq. 21); one attack run per radius serves the whole τ sweep;
* selection network S_SN (ACE-IBP): a small MLP trained with IBP on the training split to
  predict where the TRADES model is robust and accurate, its robust selection certified by IBP.

Metrics per abstain model: coverage, robust selection R_rob^sel (eq. 14) and the robust
accuracy R_rob^acc of the robustly selected samples (Section 7.2), on a class-balanced
seeded test subset. Figures: ``fig3_abstain_pareto.png`` (Fig. 3) and
``fig6_sr_ablation.png`` (Fig. 6). Records: ``records/abstain-<model>-<selector>-s<seed>.csv``.
"""
from __future__ import annotations

import re
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from . import _robust as R
from . import finetune
from .. import data as data_mod
from ..errors import DataError
from ..metrics import mean_std, paired_difference
from ..records import radii as record_radii
from ..records import read_records
from ..selectors.evaluate import abstain_records, build_selector, summarize, tau_curve
from ..selectors.sr import SoftmaxResponse
from ..sources import from_run, is_run_dir
from .base import Stage
from .study import Study


_REC = re.compile(r"^abstain-(?P<model>.+)-(?P<kind>eri|sr|sn|cri)-s(?P<seed>\d+)\.csv$")
SR_LABELS = {"apgd": "APGD", "conf": "APGDconf"}


def config(scale: str, demo: bool, study: Study) -> dict:
    """``demo``: 20-step attacks, 200 test samples, a short S_SN training (≤ 90 s on two free
    CPU cores); otherwise 40-step APGD (the paper's evaluation) on the whole test split."""
    cfg: dict[str, Any] = {
        "dataset": R.experiments({"std": {"config": study.std}})["std"]["data"]["name"],
        "label": study.label, "samples": study.abstain_samples, "steps": 40,
        "models": list(study.abstain_models), "sr_model": study.selector_model,
        "sn_model": study.selector_model, "sr_tau": 0.9, "sn_tau": 0.5,
        "sn": {"epochs": 60, "hidden": 128, "samples": study.sn_samples}, "tau_points": 101,
    }
    if demo:
        cfg.update({"samples": study.demo_abstain_samples, "steps": 20,
                    "sn": {"epochs": 40, "hidden": 64, "samples": 600}})
    cfg["upstream"] = upstream(scale, demo, study)
    cfg["attack"] = "apgd-ce"       # the paper's protocol (abstain.attacks; docs/attacks.md)
    return cfg


def upstream(scale: str, demo: bool, study: Study) -> dict[str, Any]:
    """ε, norm and seeds of the models of ``<study>-finetune``, from its configuration (the
    settings a stage passes on, never read back from its results)."""
    ft = finetune.config(scale, demo, study)
    return {"eps": float(ft["eps"]), "norm": ft["norm"], "seeds": list(ft["seeds"]),
            "stage": study.name("finetune"), "core_stage": study.name("partition")}


def model_dir(root: Path, stage: str, variant: str, seed: int) -> Path:
    return Path(root) / stage / "work" / f"{variant}-s{seed}"


def load_model(root: Path, stage: str, variant: str, seed: int, device: Any):
    """The checkpoint ``<root>/<stage>/work/<variant>-s<seed>`` or None when absent."""
    d = model_dir(root, stage, variant, seed)
    if not is_run_dir(d):
        return None
    model = from_run(d, device).model
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def load_pretrained(root: Path, stage: str, seed: int) -> Any:
    """The pre-trained model ``<root>/<stage>/work/pretrain-s<seed>`` on the CPU, trainable
    (a fine-tune starts from it); a :class:`DataError` naming the stage to run when absent."""
    base = load_model(root, stage, "pretrain", seed, "cpu")
    if base is None:
        raise DataError(f"no pre-trained model {stage}/work/pretrain-s{seed}: run {stage} first")
    for p in base.parameters():
        p.requires_grad_(True)
    return base


def test_subset(cfg: dict, device: Any):
    test = data_mod.load(cfg["dataset"], "test")
    n = len(test) if cfg["samples"] is None else int(cfg["samples"])
    idx = data_mod.balanced_subset(test.y, n, test.num_classes, seed=0)
    return test.x[idx].to(device), test.y[idx].to(device), idx.numpy(), test


def run(ctx: Any, cfg: dict) -> dict:
    t0 = time.perf_counter()
    up = cfg["upstream"]
    eps, norm = up["eps"], up["norm"]
    x, y, index, _ = test_subset(cfg, ctx.device)
    train = data_mod.load(cfg["dataset"], "train")
    jobs: list[tuple[str, str]] = [(m, "eri") for m in cfg["models"]]
    jobs += [(cfg["sr_model"], "sr"), (cfg["sn_model"], "sn")]
    done = 0
    for seed in up["seeds"]:
        for variant, kind in jobs:
            model = load_model(ctx.root, up["stage"], variant, seed, ctx.device)
            if model is None:
                if variant == "dga":
                    continue  # optional
                raise DataError(f"missing model {model_dir(ctx.root, up['stage'], variant, seed)}")
            tau = cfg["sr_tau"] if kind == "sr" else cfg["sn_tau"] if kind == "sn" else None
            sel = build_selector(kind, model, eps=eps, norm=norm, steps=cfg["steps"], seed=seed, tau=tau,
                                 attack=cfg["attack"],
                                 train=(train.x.to(ctx.device), train.y.to(ctx.device)), sn=cfg["sn"])
            ctx.write_records(f"abstain-{variant}-{kind}-s{seed}", abstain_records(sel, x, y, index))
            done += 1
    if not done:
        raise DataError(f"no fine-tuned models found under {up['stage']}/work")
    results, curves = summarize_dir(ctx.out, cfg)
    figures(ctx.out, results, curves, eps, cfg["label"])
    results["curves"] = curves
    results["fig3"] = fig3_comparisons(read_all(ctx.out), selector_model=cfg["sr_model"],
                                       points=int(cfg.get("tau_points", 101)))
    results["meta"] = {"eps": eps, "norm": norm, "seeds": up["seeds"], "steps": cfg["steps"],
                       "samples": int(len(index)), "subset": "class-balanced test subset, seed 0",
                       "sr_tau": cfg["sr_tau"], "sn_tau": cfg["sn_tau"],
                       "robust_selection": "S_ERI, S_SR: attacked in the 2ε ball; S_SN: certified by IBP",
                       "seconds": time.perf_counter() - t0}
    return results


# ----------------------------------------------------------------------------- from records
def read_all(stage_dir: Path) -> dict[tuple[str, str], dict[int, dict[str, np.ndarray]]]:
    """(model, selector) -> seed -> records."""
    out: dict[tuple[str, str], dict[int, dict[str, np.ndarray]]] = {}
    for path in sorted((Path(stage_dir) / "records").glob("abstain-*.csv")):
        m = _REC.match(path.name)
        if m:
            out.setdefault((m["model"], m["kind"]), {})[int(m["seed"])] = read_records(path)
    return out


def eps_of(records: dict[str, np.ndarray]) -> float:
    """The threat model's ε: the smallest radius of a ``robust@`` column."""
    radii = record_radii(records)
    if not radii:
        raise DataError("abstain records without a robust@<eps> column")
    return min(radii)


def _pooled(per_seed: dict[int, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    keys = set.intersection(*(set(r) for r in per_seed.values()))
    return {k: np.concatenate([per_seed[s][k] for s in sorted(per_seed)]) for k in keys}


def summarize_dir(stage_dir: Path, cfg: dict | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Variant metrics (mean over seeds) and τ-sweep curves (pooled over seeds), from records."""
    cfg = cfg or {}
    taus = {"sr": cfg.get("sr_tau", 0.9), "sn": cfg.get("sn_tau", 0.5)}
    points = int(cfg.get("tau_points", 101))
    results: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for (model, kind), per_seed in read_all(stage_dir).items():
        eps = eps_of(next(iter(per_seed.values())))
        results[f"{model}-{kind}"] = mean_std([summarize(kind, r, eps, taus.get(kind)) for r in per_seed.values()])
        if kind in ("sr", "sn"):
            pooled = _pooled(per_seed)
            curves[f"{model}-{kind}"] = tau_curve(kind, pooled, eps, points=points)
            if kind == "sr":
                for attack, label in SR_LABELS.items():
                    for ball, radius in ((False, "B_eps"), (True, "B_2eps")):
                        curves[f"{model}-sr-{attack}-{radius}"] = tau_curve(
                            kind, pooled, eps, attacks=(attack,), points=points, ball=ball)
    return results, curves


def front_gap(curve: list[dict[str, float]], rob_sel: float, sel_rob_acc: float) -> float | None:
    """How far the point (R_rob^sel, R_rob^acc) lies above a selector's τ-front (Fig. 3): its
    R_rob^acc minus the best R_rob^acc of the τ points that select at least as much robustly
    (> 0: above the front). None when no τ reaches its robust selection (the point lies beyond
    the front's end, outside it)."""
    reach = [c["sel_rob_acc"] for c in curve if c["rob_sel"] >= rob_sel]
    return None if not reach else float(sel_rob_acc - max(reach))


def fig3_comparisons(data: dict[tuple[str, str], dict[int, dict[str, np.ndarray]]], selector_model: str = "trades",
                     points: int = 101) -> dict[str, Any]:
    """Fig. 3's comparisons, per seed from the records: ERA_RI − TRADES_RI in R_rob^acc and
    R_rob^sel (paired over seeds, t-interval; the paper: +1.18 R_rob^acc at −3.78 R_rob^sel on
    CIFAR-10) and ERA_RI's distance above the S_SR / S_SN τ-fronts of ``selector_model`` on the
    same seed (:func:`front_gap`; the paper: ERA_RI "mostly improves both robust selection and
    robust accuracy" against them, Sec. 7.2 and App. A.9)."""
    era, trades = data.get(("era", "eri"), {}), data.get(("trades", "eri"), {})
    seeds = sorted(set(era) & set(trades))
    if not seeds:
        return {}
    eps = eps_of(era[seeds[0]])
    pts = {m: {s: summarize("eri", recs[s], eps) for s in seeds} for m, recs in (("era", era), ("trades", trades))}
    out: dict[str, Any] = {"seeds": seeds}
    for metric in ("sel_rob_acc", "rob_sel"):
        a, b = [pts["era"][s][metric] for s in seeds], [pts["trades"][s][metric] for s in seeds]
        out[f"era_minus_trades_ri_{metric}"] = {**paired_difference(a, b), "per_seed": [x - y for x, y in zip(a, b)]}
    for kind in ("sr", "sn"):
        recs = data.get((selector_model, kind), {})
        both = [s for s in seeds if s in recs]
        if not both:
            continue
        gaps = [front_gap(tau_curve(kind, recs[s], eps, points=points), pts["era"][s]["rob_sel"],
                          pts["era"][s]["sel_rob_acc"]) for s in both]
        shown = [g for g in gaps if g is not None]
        d = paired_difference(shown, [0.0] * len(shown)) if shown else {"mean": float("nan"), "n": 0}
        out[f"era_ri_above_{selector_model}_{kind}_front"] = {**d, "per_seed": gaps,
                                                               "beyond_front": len(gaps) - len(shown)}
    return out


def _xy(curve: list[dict[str, float]]) -> list[tuple[float, float]]:
    return [(c["rob_sel"], c["sel_rob_acc"]) for c in curve if c["rob_sel"] > 0]


def figures(stage_dir: Path, results: dict[str, Any], curves: dict[str, Any], eps: float,
            label: str) -> list[Path]:
    """Fig. 3 and Fig. 6 PNGs under ``stage_dir``."""
    from ..selectors.plots import abstain_pareto, sr_ablation  # noqa: PLC0415  heavy: matplotlib, figures only

    names = {"eri": "RI", "sr": "SR", "sn": "SN"}
    points = {}
    for v, m in results.items():
        model, kind = v.rsplit("-", 1)
        if kind == "eri":
            points[f"{model.upper()}$_{{RI}}$"] = (m["rob_sel"], m["sel_rob_acc"])
    lines = {}
    for key, c in curves.items():
        if key.endswith(("-sr", "-sn")):
            model, kind = key.rsplit("-", 1)
            lines[f"{model.upper()}$_{{{names[kind]}}}$ (τ sweep)"] = _xy(c)
    out = [abstain_pareto(points, lines, Path(stage_dir) / "fig3_abstain_pareto.png",
                          title=f"{label}, $\\ell_\\infty$ ε={eps:g}: abstain models (Fig. 3)")]
    abl = {}
    for key, c in curves.items():
        m = re.match(r"^(?P<model>.+)-sr-(?P<attack>apgd|conf)-(?P<r>B_eps|B_2eps)$", key)
        if m:
            where = "plain SR, $\\mathcal{B}_{ε}$" if m["r"] == "B_eps" else "eq. 16, $\\mathcal{B}_{2ε}$"
            abl[f"{SR_LABELS[m['attack']]} ({where})"] = _xy(c)
    if abl:
        out.append(sr_ablation(abl, Path(stage_dir) / "fig6_sr_ablation.png",
                               title=f"{label} ε={eps:g}: SR under APGD vs APGDconf (Fig. 6)"))
    return out


def _fmt(v: float) -> float:
    return round(100.0 * float(v), 2)


def report(stage_dir: Path, study: Study) -> list[dict]:
    """Tables recomputed from ``records/abstain-*.csv`` (never from results.json)."""
    stage_dir = Path(stage_dir)
    data = read_all(stage_dir)
    if not data:
        return [{"kind": "text", "text": "no abstain records found"}]
    results, _ = summarize_dir(stage_dir)
    eps = eps_of(next(iter(next(iter(data.values())).values())))
    seeds = sorted({s for per in data.values() for s in per})
    rows = []
    for v in sorted(results):
        m = results[v]
        rows.append([v, m.get("tau", ""), _fmt(m["nat_acc"]), _fmt(m["coverage"]), _fmt(m["rob_sel"]),
                     _fmt(m["sel_rob_acc"]), _fmt(m["rob_inacc"])])
    blocks: list[dict] = [
        {"kind": "heading", "text": "Abstain models (Fig. 3)"},
        {"kind": "text", "text": (
            f"{study.label}, ℓ∞ ε = {eps:g}, seeds {seeds}. Robust selection R_rob^sel (eq. 14): for S_ERI and "
            "S_SR the 2ε ball is attacked (Section 5, 7.2); for S_SN it is certified by IBP. "
            "R_rob^acc: robustly selected samples that are accurate and robust at ε, over robustly "
            "selected samples. Percentages, mean over seeds.")},
        {"kind": "table", "caption": "Abstain models: model-selector, τ, R_nat of F, coverage, R_rob^sel, "
                                      "R_rob^acc (selected), R_rob^¬acc of F",
         "columns": ["abstain model", "τ", "R_nat", "coverage", "R_rob^sel", "R_rob^acc", "R_rob^¬acc"],
         "rows": rows, "paper": None},
    ]
    if (stage_dir / "fig3_abstain_pareto.png").is_file():
        blocks.append({"kind": "image", "path": "fig3_abstain_pareto.png",
                       "caption": "Fig. 3: robust selection vs robust accuracy (TRADES_RI, ERA_RI points; "
                                  "SR and SN τ sweeps)"})
    for (model, kind), per_seed in sorted(data.items()):
        if kind != "sr":
            continue
        abl_rows = []
        for tau in (0.5, 0.7, 0.9):
            vals = {a: mean_std([{"w": float(SoftmaxResponse.wrongly_selected(r, eps, tau, a).mean()),
                                  "rs": float(SoftmaxResponse.decisions_for(r, eps, tau, (a,)).robust_selected.mean())}
                                 for r in per_seed.values()]) for a in SR_LABELS}
            abl_rows.append([tau, _fmt(vals["apgd"]["rs"]), _fmt(vals["conf"]["rs"]),
                             _fmt(vals["apgd"]["w"]), _fmt(vals["conf"]["w"])])
        blocks += [
            {"kind": "heading", "text": f"Softmax response: APGD vs APGDconf (Fig. 6, {model})"},
            {"kind": "table", "caption": "R_rob^sel (eq. 16, 2ε ball) and wrongly selected samples "
                                          "(x' ∈ B_ε with changed prediction and max-softmax ≥ τ) per attack, %",
             "columns": ["τ", "R_rob^sel APGD", "R_rob^sel APGDconf", "wrongly selected APGD",
                         "wrongly selected APGDconf"], "rows": abl_rows, "paper": None},
        ]
    if (stage_dir / "fig6_sr_ablation.png").is_file():
        blocks.append({"kind": "image", "path": "fig6_sr_ablation.png",
                       "caption": "Fig. 6: SR abstain model under APGD and APGDconf over τ ∈ [0, 1)"})
    return blocks


def make_stage(study: Study) -> Stage:
    return Stage(name=study.name("abstain"),
                 title=f"{study.name('abstain')} — ERI / SR / SN selectors, Pareto fronts (paper Fig. 3, 6)",
                 depends=(study.name("partition"), study.name("finetune")), config=partial(config, study=study),
                 run=run, report=partial(report, study=study), expected_seconds=study.expected["abstain"])

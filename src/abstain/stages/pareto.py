"""Stage ``mnist1d-pareto``: the paper's comparison along Pareto fronts (Sec. 8; Fig. 2, 4, 7)
on MNIST-1D, instead of one ERA point against one TRADES point.

* Pre-training: the TRADES pre-training at 2ε (``configs/mnist1d-trades-pretrain.toml``), one
  per pre-training seed (``pretrain_seeds``, 3 at mini scale), trained by the stage
  ``mnist1d-pretrain`` (shared with ``mnist1d-finetune``, ``mnist1d-certify`` and
  ``mnist1d-compose-2eps``; its records hold the pre-trained models' evaluation).
* Fine-tunes of each pre-trained model at ε = 0.02 (the study's fine-tune configs, the weight
  overridden): TRADES γ ∈ {0.5, 1, 2, 4, 6, 12, 24}; ERA (the paper's loss) β ∈ {0.1, 0.25, 0.5,
  1, 2, 4}; ERA (the authors' variant) and DGA β ∈ {0.25, 1, 4}. Each fine-tune is seeded with
  its pre-training seed. **One selection rule for every loss: the last epoch**
  (``[train] select = "last"``), so that no gap comes from model selection (train/select.py
  selects TRADES on robust accuracy and ERA/DGA on robust accuracy − robust inaccuracy).
* Evaluation of every point on the whole test set with the paper's APGD-CE (40 steps) at ε and
  2ε, and the strong default attack beside it (``strong--`` records); each point is composed
  (eq. 15) with the standard core of ``mnist1d-partition`` through S_ERI (selected = robust at
  ε, robust selection = robust at 2ε): natural and sound robust accuracy, the authors' count
  beside.
* τ-fronts (:mod:`abstain.stages.tau_fronts`): the softmax-response (eq. 16) and
  selection-network selectors of each seed's TRADES γ = 6 fine-tune (the settings of
  ``mnist1d-abstain``), swept over τ ∈ [0, 1) (20 values), each τ a point (robust accuracy,
  robust inaccuracy of the abstain model, robust selection beside) on Fig. 2 beside the
  fine-tune fronts: ``tau_fronts`` → ``sr`` / ``sn`` → points, and ``era_minus_sr`` /
  ``era_minus_sn`` at the matched levels the τ-front reaches.
* Decisions (:func:`summarize`, recomputed by the report from the records):
  ``matched``: each front (the lower hull of its points in the plane robust accuracy → robust
  inaccuracy, Fig. 2) read at robust-accuracy levels inside every front's range on every seed,
  ``<method>_minus_trades_rob_inacc@<level>`` per seed, and ``era_minus_dga``; ``budget``: the
  best sound robust accuracy of a method's compositions within 0.5 / 1.0 point of natural
  accuracy below the core. Intervals: :func:`abstain.stats.hierarchical_bootstrap` over
  pre-training seeds (each fine-tune shares its pre-training seed, so the within-seed level
  has one unit: the interval covers pre-training and fine-tune seeds together, one dataset draw
  and one test set); with 3 seeds a percentile interval is close to [min, max] of the per-seed
  values. Holm's correction (:func:`abstain.stats.holm`) runs over the ``matched`` comparisons
  with one-sample t-test p-values of the per-seed differences.

Records: ``records/<point>-s<seed>.csv`` (``point`` = ``trades-g6``, ``era-b1``,
``era-authors-b1``, ``dga-b1``), ``strong--…``, ``compose--<point>-s<seed>.csv``,
``tau-sr--trades-g6-s<seed>.csv`` / ``tau-sn--…`` and ``core-s0.csv``. Figures: ``fig2_fronts.png``, ``fig4_fronts.png``.
"""
from __future__ import annotations

import time
import io
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import stats
from ..composition import composition_columns
from ..data import balanced_subset
from ..io import atomic_write_bytes
from ..records import read_records
from ..selectors.evaluate import candidate, core_records
from . import _robust as R
from . import pretrain, tau_fronts
from .abstain_models import load_pretrained
from .base import Stage
from .compose import load_core

PARTITION = "mnist1d-partition"
PRETRAIN = pretrain.NAME
CONFIGS = {"trades": ("mnist1d-trades-finetune", "gamma", "g"), "era": ("mnist1d-era-finetune", "beta", "b"),
           "era-authors": ("mnist1d-era-authors-finetune", "beta", "b"), "dga": ("mnist1d-dga-finetune", "beta", "b")}
WEIGHTS = {"trades": [0.5, 1.0, 2.0, 4.0, 6.0, 12.0, 24.0], "era": [0.1, 0.25, 0.5, 1.0, 2.0, 4.0],
           "era-authors": [0.25, 1.0, 4.0], "dga": [0.25, 1.0, 4.0]}
DEMO_WEIGHTS = {"trades": [6.0], "era": [1.0]}
LOSSES = (0.005, 0.01)          # natural-accuracy loss against the core (fractions)


def point_name(method: str, param: float) -> str:
    return f"{method}-{CONFIGS[method][2]}{param:g}"


def config(scale: str, demo: bool) -> dict:
    """Every fine-tune is its method's study config with the weight set and ``select = last``."""
    weights = DEMO_WEIGHTS if demo else WEIGHTS
    specs = {point_name(m, p): {"config": CONFIGS[m][0],
                                "set": {f"loss.{CONFIGS[m][1]}": p, "train.select": "last"}}
             for m, ps in weights.items() for p in ps}
    points = R.experiments(specs)
    eps = {c["loss"]["eps"] for c in points.values()}
    if len(eps) != 1:
        raise ValueError(f"the pareto fine-tunes disagree on ε: {sorted(eps)}")
    # the demo's 2 points (one pre-training seed) show the pipeline, not the fronts
    up = pretrain.config(scale, demo)
    eps = eps.pop()
    if abs(up["eps"] - eps) > 1e-12:
        raise ValueError(f"{PRETRAIN} evaluates at ε = {up['eps']:g}, the fronts are at {eps:g}")
    return {"pretrain_stage": PRETRAIN, "pretrain_seeds": list(up["seeds"]), "eps": eps, "norm": "linf",
            "points": points, "methods": {m: [[point_name(m, p), p] for p in ps] for m, ps in weights.items()},
            "eval_steps": 40, "attack": R.PAPER_ATTACK, "compare_attack": None if demo else R.STRONG_ATTACK,
            "test_samples": None, "core_stage": PARTITION, "n_boot": 2000, "losses": list(LOSSES),
            "tau_fronts": tau_fronts.config(demo)}


def _test_subset(test: Any, n: int | None) -> Any:
    if n is None or n >= len(test):
        return test

    return test.subset(balanced_subset(test.y, n, test.num_classes, seed=0))


def _run(ctx: Any, cfg: dict) -> dict:

    t0 = time.perf_counter()
    eps = cfg["eps"]
    _, _, test = R.splits(next(iter(cfg["points"].values())), 0)
    test = _test_subset(test, cfg["test_samples"])
    index = np.arange(len(test))            # the row of the (sub)set, as evaluate() numbers it
    core, core_seed = load_core(ctx.root, cfg["core_stage"], "std", 0, ctx.device)
    crec = core_records(core, test.x.to(ctx.device), test.y.to(ctx.device), index, eps=eps, norm=cfg["norm"],
                        steps=cfg["eval_steps"], seed=0, attack=cfg["attack"])
    ctx.write_records("core-s0", crec)
    y, cpred, crob = crec["label"], crec["pred"], R.robust_column(crec, eps)
    jobs = [(s, name, c) for s in cfg["pretrain_seeds"] for name, c in cfg["points"].items()]
    pretrained: dict[int, Any] = {}
    for seed, name, c in R.progress_iter(ctx, jobs, "MNIST-1D fronts"):
        if seed not in pretrained:
            pretrained[seed] = load_pretrained(ctx.root, cfg["pretrain_stage"], seed)
        model = R.train_experiment(ctx, name, seed, c, init_from=pretrained[seed])
        cols = R.evaluate_records(ctx, model, test, eps=[eps], config=cfg, name=name, seed=seed, double_eps=True)
        tf = cfg.get("tau_fronts")
        if tf and name == tf["point"]:
            tau_fronts.run(ctx, tf, model, R.splits(c, seed)[0], test, eps=eps, norm=cfg["norm"], seed=seed)
        cc = composition_columns(y, candidate(name, "eri", cols, eps), cpred, crob)
        ctx.write_records(f"compose--{name}-s{seed}", {"index": cols["index"], "label": y, "pred": cc["h_pred"],
                                                       "rob_acc": cc["h_robust_acc"],
                                                       "rob_acc_paper": cc["h_robust_acc_paper"]})
    results = summarize(ctx.out, cfg["methods"], n_boot=cfg["n_boot"], losses=cfg["losses"],
                        tau_points=(cfg.get("tau_fronts") or {}).get("tau_points", 20))
    figures(ctx.out, results)
    results["meta"].update({"core_seed": core_seed, "seconds": time.perf_counter() - t0,
                            "finetune_epochs": next(iter(cfg["points"].values()))["train"]["epochs"],
                            "eval": f"APGD-CE {cfg['eval_steps']} steps aimed at the prediction, ε and 2ε"})
    return results


def _mean_std(vals: list[float]) -> tuple[float, float]:
    a = np.asarray(vals, dtype=float)
    return float(a.mean()), float(a.std())


def _fronts(methods: Mapping[str, list], recs: Mapping[str, Any], comp: Mapping[str, Any], seeds: list[int],
            eps: float) -> tuple[dict[str, dict[int, list[dict[str, float]]]], dict[str, list[dict[str, float]]]]:
    """Per method: every seed's points (the partition at ε, eq. 2/3, and the composition's
    natural / sound robust accuracy, eq. 15), and the front of their means and deviations."""
    per: dict[str, dict[int, list[dict[str, float]]]] = {}     # method -> seed -> points
    fronts: dict[str, list[dict[str, float]]] = {}
    for method, ps in methods.items():
        for name, param in ps:
            if name not in recs or name not in comp:
                continue
            vals = {}
            for s in seeds:
                p = R.partition_at(recs[name][s], eps)
                c = comp[name][s]
                m = {"param": float(param), "nat_acc": p["nat_acc"], "rob_acc": p["rob_acc"], "rob_inacc": p["rob_inacc"],
                     "compose_nat_acc": float(np.mean(c["pred"] == c["label"])),
                     "compose_rob_acc": float(np.mean(c["rob_acc"].astype(bool))),
                     "compose_rob_acc_paper": float(np.mean(c["rob_acc_paper"].astype(bool)))}
                per.setdefault(method, {}).setdefault(s, []).append(m)
                vals.setdefault("per", []).append(m)
            point: dict[str, float] = {"param": float(param)}
            for k in ("nat_acc", "rob_acc", "rob_inacc", "compose_nat_acc", "compose_rob_acc", "compose_rob_acc_paper"):
                point[k], point[f"{k}_std"] = _mean_std([m[k] for m in vals["per"]])
            fronts.setdefault(method, []).append(point)
    return per, fronts


def _interval(values: list[float], n_boot: int) -> dict[str, Any]:
    """Mean and 95% percentile-bootstrap interval over pre-training seeds (one value each)."""

    bs = stats.hierarchical_bootstrap([[v] for v in values], n_boot=n_boot, seed=0)
    return {"mean": bs["mean"], "ci95_low": bs["ci95_low"], "ci95_high": bs["ci95_high"],
            "per_seed": [float(v) for v in values]}


def _budget(per: Mapping[str, dict[int, list[dict[str, float]]]], seeds: list[int], core_nat: float,
            losses: Any, n_boot: int) -> dict[str, Any]:
    """Per method and natural-accuracy loss: the best sound robust accuracy of its compositions
    within that loss against the core (eq. 15), with its interval over seeds."""

    budget: dict[str, Any] = {}
    for method, by_seed in per.items():
        for loss in losses:
            best = [stats.best_within([m["compose_nat_acc"] for m in by_seed[s]],
                                      [m["compose_rob_acc"] for m in by_seed[s]], core_nat, loss) for s in seeds]
            key = f"{method}@{100 * loss:.1f}"
            if np.isfinite(best).all():
                budget[key] = _interval(best, n_boot)
            else:
                budget[key] = {"mean": float("nan"), "ci95_low": float("nan"), "ci95_high": float("nan"),
                               "per_seed": [float(v) for v in best],
                               "note": "no composition within this loss on some seed"}
    return budget


def summarize(stage_dir: Path, methods: Mapping[str, list], *, n_boot: int = 2000,
              losses: tuple[float, ...] | list[float] = LOSSES, tau_points: int = 20) -> dict[str, Any]:
    """``fronts``, ``matched``, ``budget``, ``core``, ``tau_fronts`` and ``meta`` (module doc)
    recomputed from the records under ``stage_dir/records``: per point and pre-training seed the
    partition at ε (eq. 2, 3) and the composition's natural / sound robust accuracy (eq. 15);
    per selector of :mod:`abstain.stages.tau_fronts` and τ the abstain model's robust accuracy
    and inaccuracy (eq. 2, 3) and robust selection (eq. 14)."""
    from scipy.stats import ttest_1samp  # noqa: PLC0415  heavy: scipy, only for the summary


    stage_dir = Path(stage_dir)
    recs = R.read_stage_records(stage_dir)
    comp = R.read_stage_records(stage_dir, "compose--")
    core = read_records(stage_dir / "records" / "core-s0.csv")
    eps = R.eps_of_columns(core)[0]
    core_nat = float(np.mean(core["pred"] == core["label"]))
    core_m = {"nat_acc": core_nat, "rob_acc": float(np.mean((core["pred"] == core["label"]) & R.robust_column(core, eps)))}
    present = [set(recs[n]) & set(comp.get(n, {})) for ps in methods.values() for n, _ in ps if n in recs]
    seeds = sorted(set.intersection(*present)) if present else []
    per, fronts = _fronts(methods, recs, comp, seeds, eps)
    # matched robust-accuracy levels inside every front of every seed (Fig. 2's lower hulls)
    ranges = [[m["rob_acc"] for m in pts] for by_seed in per.values() for pts in by_seed.values()]
    levels: list[float] = []
    if ranges and "trades" in per:
        lo, hi = stats.common_range(ranges)
        if hi > lo:
            levels = sorted({round(lo + (hi - lo) * q, 3) for q in (0.25, 0.5, 0.75)})

    # the τ-fronts of S_SR / S_SN (Fig. 2's axes), compared with ERA at the same levels where
    # they reach them (a τ-front runs from the TRADES γ = 6 point down to (0, 0))
    tper = tau_fronts.per_seed(stage_dir, eps, tau_points)
    curves = {**per, **{k: v for k, v in tper.items() if set(seeds) <= set(v)}}

    def at(method: str, s: int, level: float) -> float:
        pts = curves[method][s]
        return stats.front_at([m["rob_acc"] for m in pts], [m["rob_inacc"] for m in pts], level, "lower")

    matched: dict[str, Any] = {}
    pairs = [(m, "trades") for m in per if m != "trades"] + ([("era", "dga")] if {"era", "dga"} <= set(per) else [])
    pairs += [("era", k) for k in tau_fronts.KINDS if k in curves and "era" in per]
    for a, b in pairs:
        for level in levels:
            d = [at(a, s, level) - at(b, s, level) for s in seeds]
            if not np.isfinite(d).all():
                continue
            p = float(ttest_1samp(d, 0.0).pvalue) if len(d) > 1 and np.ptp(d) > 0 else float("nan")
            matched[f"{a.replace('-', '_')}_minus_{b}_rob_inacc@{level:g}"] = {**_interval(d, n_boot), "t_p": p}
    finite = [k for k, v in matched.items() if np.isfinite(v["t_p"])]
    if finite:
        h = stats.holm([matched[k]["t_p"] for k in finite])
        for k, adj, rej in zip(finite, h["adjusted"], h["reject"]):
            matched[k].update({"holm_p": adj, "holm_reject": rej})
    budget = _budget(per, seeds, core_nat, losses, n_boot)
    return {"fronts": fronts, "matched": matched, "budget": budget, "core": core_m,
            "tau_fronts": tau_fronts.summarize(tper, seeds),
            "meta": {"pretrain_seeds": seeds, "eps": eps, "levels": levels, "losses": list(losses),
                     "n_test": int(len(core["label"])), "selection": "last epoch for every loss",
                     "interval": ("percentile bootstrap over pre-training seeds (fine-tunes resampled within; one "
                                  "fine-tune per seed and point, seeded like its pre-training); one dataset draw, "
                                  "one test set"),
                     "holm": "over the matched comparisons, one-sample t-test p-values of the per-seed differences",
                     "tau_fronts": ("S_SR / S_SN of the trades-g6 fine-tune over τ: rob_acc / rob_inacc = "
                                    "selected, robust at ε and (in)accurate, fractions of the test set; rob_sel "
                                    "eq. 14")}}


STYLE = {"trades": ("^", "#d94801"), "era": ("o", "#08519c"), "era-authors": ("D", "#6baed6"), "dga": ("s", "#238b45")}
TAU_STYLE = {"sr": ("--", "#756bb1", "TRADES γ 6 + S_SR (τ sweep)"), "sn": (":", "#636363", "TRADES γ 6 + S_SN (τ sweep)")}


def figures(stage_dir: Path, results: Mapping[str, Any]) -> list[str]:
    """Fig. 2 (robust inaccuracy vs robust accuracy, points and lower hulls, the S_SR / S_SN
    τ-fronts as lines) and Fig. 4 (composition natural vs sound robust accuracy, upper hulls,
    the core) from seed means."""
    from matplotlib.figure import Figure  # noqa: PLC0415  heavy: matplotlib, only for figures (no pyplot: a user's backend is never switched)

    out = []
    for fname, xk, yk, hull in (("fig2_fronts.png", "rob_acc", "rob_inacc", stats.lower_hull),
                                ("fig4_fronts.png", "compose_nat_acc", "compose_rob_acc", stats.upper_hull)):
        fig = Figure(figsize=(5.5, 4.2))
        ax = fig.subplots()
        for method, pts in results["fronts"].items():
            marker, color = STYLE.get(method, ("x", "grey"))
            x = [100 * p[xk] for p in pts]
            y = [100 * p[yk] for p in pts]
            ax.plot(x, y, marker, color=color, ls="none", label=method)
            hx, hy = hull(x, y)
            ax.plot(hx, hy, "-", color=color, lw=1)
        if fname.startswith("fig2"):
            for kind, pts in results.get("tau_fronts", {}).items():
                ls, color, label = TAU_STYLE.get(kind, ("-.", "grey", kind))
                ax.plot([100 * p["rob_acc"] for p in pts], [100 * p["rob_inacc"] for p in pts], ls, color=color,
                        lw=1.2, label=label)
        if fname.startswith("fig4"):
            c = results["core"]
            ax.plot([100 * c["nat_acc"]], [100 * c["rob_acc"]], "*", color="black", ms=12, ls="none", label="core")
            ax.set_xlabel("natural accuracy of the composition (%)")
            ax.set_ylabel("sound robust accuracy of the composition (%)")
            ax.set_title("MNIST-1D: compositions of every point with the core (Fig. 4)", fontsize=9)
        else:
            ax.set_xlabel("robust accuracy R_rob^acc (%)")
            ax.set_ylabel("robust inaccuracy R_rob^¬acc (%)")
            ax.set_title("MNIST-1D fronts over γ / β, lower hulls (Fig. 2)", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        atomic_write_bytes(Path(stage_dir) / fname, buf.getvalue())
        out.append(fname)
    return out


def _ci(d: Mapping[str, Any]) -> str:
    return f"{100 * d['mean']:+.2f} [{100 * d['ci95_low']:+.2f}, {100 * d['ci95_high']:+.2f}]"


def report(stage_dir: Path) -> list[dict]:
    """Every number recomputed from the records (:func:`summarize`)."""
    stage_dir = Path(stage_dir)
    if not (stage_dir / "records" / "core-s0.csv").is_file():
        return [{"kind": "text", "text": "no mnist1d-pareto records found"}]
    methods: dict[str, list] = {}
    for name in R.read_stage_records(stage_dir):
        for m in sorted(CONFIGS, key=len, reverse=True):
            tag = f"{m}-{CONFIGS[m][2]}"
            if name.startswith(tag):
                methods.setdefault(m, []).append([name, float(name[len(tag):])])
                break
    for ps in methods.values():
        ps.sort(key=lambda p: p[1])
    res = summarize(stage_dir, methods)
    meta = res["meta"]
    rows = [[m, f"{p['param']:g}"] + [f"{100 * p[k]:.2f} ± {100 * p[k + '_std']:.2f}" for k in
            ("nat_acc", "rob_acc", "rob_inacc", "compose_nat_acc", "compose_rob_acc")]
            + [f"{100 * p['compose_rob_acc_paper']:.2f}"]
            for m, pts in res["fronts"].items() for p in pts]
    blocks: list[dict] = [
        {"kind": "heading", "text": "MNIST-1D: Pareto fronts of TRADES / ERA / DGA and compositions from every point "
                                    "(Fig. 2, 4; Sec. 8)"},
        {"kind": "text", "text": (
            f"ε∞ = {meta['eps']:g}, pre-training seeds {meta['pretrain_seeds']}, {meta['n_test']} test signals, "
            "APGD-CE 40 steps. Every fine-tune is selected at its last epoch (one rule for every loss). "
            f"Intervals: {meta['interval']}. Core alone: natural {100 * res['core']['nat_acc']:.2f}%, robust "
            f"{100 * res['core']['rob_acc']:.2f}%.")},
        {"kind": "table", "caption": "Front points, mean ± std over pre-training seeds (%); the composition with the "
                                     "core through S_ERI (sound robust accuracy; the authors' count in the last column)",
         "columns": ["method", "γ/β", "nat_acc", "rob_acc", "rob_inacc", "compose nat", "compose rob (sound)",
                     "compose rob (authors' count)"], "rows": rows, "paper": None}]
    mrows = [[k, _ci(v), ", ".join(f"{100 * x:+.2f}" for x in v["per_seed"]),
              "–" if "holm_p" not in v else f"{v['holm_p']:.3f}",
              "–" if "holm_p" not in v else ("yes" if v["holm_reject"] else "no")] for k, v in res["matched"].items()]
    if mrows:
        blocks.append({"kind": "table", "caption": "Matched robust accuracy: difference of robust inaccuracy between "
                       "the lower hulls at the level (points): mean [95% bootstrap interval], per seed, Holm-adjusted "
                       "t-test p, survives Holm at 0.05", "columns": ["comparison", "Δ rob_inacc", "per seed",
                                                                     "Holm p", "survives"],
                       "rows": mrows, "paper": None})
    brows = [[k, "–" if not np.isfinite(v["mean"]) else
              f"{100 * v['mean']:.2f} [{100 * v['ci95_low']:.2f}, {100 * v['ci95_high']:.2f}]",
              ", ".join(f"{100 * x:.2f}" for x in v["per_seed"])] for k, v in res["budget"].items()]
    blocks.append({"kind": "table", "caption": "Best sound robust accuracy of a method's compositions within a "
                   "natural-accuracy loss (points) against the core: mean [95% bootstrap interval], per seed (%)",
                   "columns": ["method@loss", "best rob_acc", "per seed"], "rows": brows, "paper": None})
    trows = [[kind, f"{p['tau']:.2f}"] + [f"{100 * p[k]:.2f} ± {100 * p[k + '_std']:.2f}"
                                          for k in ("rob_acc", "rob_inacc", "rob_sel")]
             for kind, pts in res["tau_fronts"].items() for p in pts[::2]]
    if trows:
        blocks.append({"kind": "table", "caption": "τ-fronts of the TRADES γ = 6 fine-tune with softmax response "
                       "(S_SR, eq. 16; APGD and APGDconf) and a selection network (S_SN), every second τ of the grid: "
                       "robust accuracy / inaccuracy of the abstain model (selected, robust at ε, accurate / wrong; "
                       "% of the test set) and robust selection (eq. 14), mean ± std over pre-training seeds; the "
                       "era_minus_sr / era_minus_sn rows of the matched table compare them with ERA's front",
                       "columns": ["selector", "τ", "rob_acc", "rob_inacc", "rob_sel"], "rows": trows,
                       "paper": None})
    for f, cap in (("fig2_fronts.png", "Fig. 2: robust inaccuracy vs robust accuracy, each method's lower hull, "
                                       "the S_SR / S_SN τ-fronts of TRADES γ = 6 as lines"),
                   ("fig4_fronts.png", "Fig. 4: compositions, natural vs sound robust accuracy, upper hulls")):
        if (stage_dir / f).is_file():
            blocks.append({"kind": "image", "path": f, "caption": cap})
    return blocks


STAGE = Stage(name="mnist1d-pareto",
              title="mnist1d-pareto — fronts of TRADES / ERA / DGA over their weights, compositions from every "
                    "point (paper Fig. 2, 4; Sec. 8)",
              depends=(PARTITION, PRETRAIN), config=config, run=R.one_thread(_run), report=report,
              expected_seconds=(100.0, 1600.0))

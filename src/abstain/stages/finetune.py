"""Stages ``<study>-finetune`` (``digits-finetune``, ``mnist1d-finetune``): the paper's
Tables 4/5/8 and Fig. 2 in miniature (:mod:`abstain.stages.study`).

A TRADES model (eq. 7, γ = 6) is pre-trained from scratch at 2ε (``pretrain``), then
fine-tuned at ε for the same number of epochs with the study's fine-tune configs, e.g.

* ``trades``       TRADES (γ = 6),
* ``era``          ERA (eq. 5, β = 1 as in Table 5, γ = 6), the paper's loss: targeted inner
                   minimisation (eq. 8), batch-mean KL;
* ``era-authors``  ERA as the authors' code computes it (``variant = "authors"``: one shared
                   untargeted inner point, KL/K, eval-mode logits; docs/fidelity.md);
* ``era-shared``   the paper's loss with the authors' untargeted shared inner point;
* ``dga``          DGA (eq. 20, β = 1),

all from the same pre-trained weights, with the same schedule (finetune preset: ×0.1 at
75%), over several seeds (a pre-training per seed, or with ``shared_pretrain`` one
pre-trained model fine-tuned with every seed, as the paper fine-tunes one published model; with
``pretrain_stage`` the pre-trained model is that stage's, trained once for several stages). Each model is evaluated on the test split with 40-step APGD-CE at
ε and 2ε (and with the strong default attack beside it): the four-way partition at ε
(eq. 2, 3), and the robustness-indicator abstain model (F, S_ERI) (Section 5): coverage,
robust selection ``rob_sel`` (eq. 14, robustness at 2ε) and ``sel_rob_acc``. Every variant
is compared with ``trades`` seed by seed (same pre-trained weights): the mean paired
difference of robust inaccuracy and robust accuracy with a 95% t-interval
(``<variant>_minus_trades_rob_inacc`` in results.json).

Fig. 2 in miniature (``fig2.png``): robust accuracy against robust inaccuracy of TRADES
fine-tunes over γ (TRADES' β) and ERA fine-tunes over β (seed 0), plus the seed means.
"""
from __future__ import annotations

import io
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from . import _robust as R
from ..io import atomic_write_bytes
from ..metrics import mean_std, paired_difference
from .base import Stage
from .study import Study

def config(scale: str, demo: bool, study: Study) -> dict:
    """The experiments are the study's configs: the TRADES pre-training at 2ε and the
    fine-tunes at ε that start from it (``[experiment] init_from``). The demo differs only in
    seeds and the β/γ sweep: with shorter training the ERA model is too little robust at 2ε for
    S_ERI to select anything (measured on digits: the demo's compositions then fell below the core)."""
    pretrain = R.experiments({"pretrain": {"config": study.pretrain}})["pretrain"]
    variants = R.experiments(study.finetunes)
    sweep = {} if demo else R.experiments(study.sweep)
    threat = {(c["loss"]["eps"], c["loss"]["norm"]) for c in [*variants.values(), *sweep.values()]}
    if len(threat) != 1:
        raise ValueError(f"the {study.label} fine-tunes disagree on the threat model: {sorted(threat)}")
    (eps, norm), = threat
    for name, c in {**variants, **sweep}.items():
        if c["experiment"]["init_from"] != study.pretrain:
            raise ValueError(f"fine-tune {name} must start from {study.pretrain} "
                             f"([experiment] init_from), not {c['experiment']['init_from']!r}")
    if study.pretrain_stage:
        from . import get as get_stage  # noqa: PLC0415  cycle: stages/__init__ imports this module for its table

        theirs = get_stage(study.pretrain_stage).config(scale, demo)["pretrain"]
        if theirs != pretrain:
            raise ValueError(f"{study.pretrain_stage} pre-trains another model than {study.pretrain}")
    return {"seeds": list(study.demo_seeds if demo else study.seeds), "eps": eps, "norm": norm,
            "pretrain": pretrain, "shared_pretrain": study.shared_pretrain, "pretrain_stage": study.pretrain_stage,
            "variants": variants, "sweep": sweep, "sweep_seeds": [0],
            "eval_steps": 40, "label": study.label,
            # the paper's APGD-CE for every number; the strong default attack beside it
            "attack": R.PAPER_ATTACK, "compare_attack": R.STRONG_ATTACK}


def paired_vs_trades(per: dict[str, list[dict[str, float]]], seeds: list[int]) -> dict[str, Any]:
    """``<variant>_minus_trades_<metric>``: the paired difference to ``trades`` over ``seeds``
    (:func:`abstain.metrics.paired_difference`) for robust inaccuracy and robust accuracy."""
    out: dict[str, Any] = {}
    base = per.get("trades", [])
    for variant, vals in per.items():
        if variant == "trades" or len(vals) != len(base) or len(vals) != len(seeds):
            continue
        for metric in ("rob_inacc", "rob_acc"):
            out[f"{variant.replace('-', '_')}_minus_trades_{metric}"] = paired_difference(
                [v[metric] for v in vals], [b[metric] for b in base])
    return out


def _run(ctx: Any, config: dict) -> dict:
    t0 = time.perf_counter()
    eps, norm = config["eps"], config["norm"]
    per: dict[str, list[dict[str, float]]] = {}
    jobs = [(s, v, c) for s in config["seeds"] for v, c in config["variants"].items()]
    jobs += [(s, v, c) for s in config["sweep_seeds"] for v, c in config["sweep"].items()]
    pretrained: dict[int, Any] = {}

    def record(name: str, seed: int, model: Any, cfg: dict) -> None:
        _, _, test = R.splits(cfg, seed)
        cols = R.evaluate_records(ctx, model, test, eps=[eps], config=config, name=name, seed=seed,
                                  double_eps=True)
        per.setdefault(name, []).append({**R.partition_at(cols, eps), **R.eri_metrics(cols, eps),
                                         "rob_inacc_2eps": R.partition_at(cols, 2 * eps)["rob_inacc"]})

    for seed, variant, cfg in R.progress_iter(ctx, jobs, f"{config['label']} fine-tunes"):
        pseed = config["seeds"][0] if config.get("shared_pretrain") else seed
        if pseed not in pretrained:
            if config.get("pretrain_stage"):
                from .abstain_models import load_pretrained  # noqa: PLC0415  cycle: abstain_models imports this module

                pretrained[pseed] = load_pretrained(ctx.root, config["pretrain_stage"], pseed)
            else:
                pretrained[pseed] = R.train_experiment(ctx, "pretrain", pseed, config["pretrain"]).cpu()
            record("pretrain", pseed, pretrained[pseed], config["pretrain"])
        model = R.train_experiment(ctx, variant, seed, cfg, init_from=pretrained[pseed])
        record(variant, seed, model, cfg)
    results: dict[str, Any] = {v: mean_std(vals) for v, vals in per.items()}
    main = {v: vals for v, vals in per.items() if v in config["variants"]}
    results.update(paired_vs_trades(main, config["seeds"]))
    figure = _fig2(ctx.out, config["label"])
    some = next(iter(config["variants"].values()))["train"]
    results["meta"] = {"eps": eps, "norm": norm, "seeds": config["seeds"],
                       "pretrain_eps": config["pretrain"]["loss"]["eps"],
                       "pretrain_epochs": config["pretrain"]["train"]["epochs"],
                       "finetune_epochs": some["epochs"], "finetune_lr": some["lr"],
                       "sweep_seeds": config["sweep_seeds"],
                       "paired": "variant − trades per seed (same pre-trained weights), mean and 95% t-interval",
                       "eval": f"APGD-CE {config['eval_steps']} steps aimed at the prediction, ε and 2ε",
                       "figures": [figure] if figure else [], "seconds": time.perf_counter() - t0}
    return results


def _points(stage_dir: Path) -> dict[str, tuple[str, float, float, float, float, int]]:
    """variant -> (family, rob_inacc mean, rob_acc mean, rob_inacc std, rob_acc std, seeds)."""
    recs = R.read_stage_records(stage_dir)
    out = {}
    for variant, seeds in recs.items():
        fam = "trades" if variant.startswith("trades") else "era" if variant.startswith("era") else variant
        eps = R.eps_of_columns(next(iter(seeds.values())))[0]
        v = R.per_seed(seeds, lambda c, e=eps: R.partition_at(c, e))
        out[variant] = (fam, float(np.mean(v["rob_inacc"])), float(np.mean(v["rob_acc"])),
                        float(np.std(v["rob_inacc"])), float(np.std(v["rob_acc"])), len(seeds))
    return out


def _fig2(out: Path, label: str) -> str | None:
    from matplotlib.figure import Figure   # noqa: PLC0415  heavy: matplotlib; no pyplot (backend untouched)

    pts = _points(out)
    if not pts:
        return None
    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.subplots()
    style = {"trades": ("^", "#d94801"), "era": ("o", "#08519c"), "dga": ("s", "#238b45"),
             "pretrain": ("x", "black")}
    for variant, (fam, ri, ra, ri_s, ra_s, n) in sorted(pts.items()):
        marker, color = style.get(fam, ("d", "grey"))
        ax.errorbar(ri * 100, ra * 100, xerr=ri_s * 100, yerr=ra_s * 100, fmt=marker, color=color,
                    mfc="none" if "-" in variant else color, capsize=2)
        ax.annotate(f"{variant} ({n})", (ri * 100, ra * 100), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel("robust inaccuracy R_rob^¬acc (%)")
    ax.set_ylabel("robust accuracy R_rob^acc (%)")
    ax.set_title(f"{label} fine-tunes at ε (Fig. 2 in miniature; (n) = seeds)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(Path(out) / "fig2.png", buf.getvalue())
    return "fig2.png"


def report(stage_dir: Path, study: Study) -> list[dict]:
    stage_dir = Path(stage_dir)
    recs, strong, blocks = R.study_report_start(stage_dir, study.label, "TRADES vs ERA vs DGA fine-tuning "
                                                "(Tables 4, 5, 8 and Fig. 2 in miniature)", study.note)
    order = ["pretrain", *study.finetunes]
    rows = []
    eps = None
    for variant in sorted(recs, key=lambda v: (order.index(v) if v in order else 99, v)):
        seeds = recs[variant]
        eps = R.eps_of_columns(next(iter(seeds.values())))[0]
        v = R.per_seed(seeds, lambda c, e=eps: {**R.partition_at(c, e), **R.eri_metrics(c, e),
                                                "rob_inacc_2eps": R.partition_at(c, 2 * e)["rob_inacc"]})
        rows.append([variant, str(len(seeds))] + [R.pct(v[k]) for k in
                    ("nat_acc", "rob_acc", "rob_inacc", "nonrob_acc", "nonrob_inacc", "coverage",
                     "rob_sel", "sel_rob_acc", "rob_inacc_2eps")] + [R.strong_rob_inacc(strong, variant, eps)])
    if rows:
        n_test = len(next(iter(next(iter(recs.values())).values()))["label"])
        blocks.append({"kind": "table", "caption": f"{study.label} test set ({n_test}), ε∞ = {eps:g}; partition at ε and the "
                       "S_ERI abstain model (selection = robust at ε; robust selection = robust at 2ε); "
                       "mean ± std over seeds; APGD-CE 40 steps (the paper's protocol); last column: robust "
                       "inaccuracy under the strong default attack (docs/attacks.md)",
                       "columns": ["variant", "seeds", "nat_acc %", "rob_acc %", "rob_inacc %", "nonrob_acc %",
                                   "nonrob_inacc %", "coverage %", "rob_sel %", "sel_rob_acc %",
                                   "rob_inacc@2ε %", "rob_inacc % (strong)"],
                       "rows": rows, "paper": None})
    paired = _paired_table(recs, study)
    if paired is not None:
        blocks.append(paired)
    blocks.append({"kind": "text", "text": (
        "pretrain = TRADES from scratch at 2ε; every other row is fine-tuned from it at ε for the same "
        "number of epochs. era = eq. 5 with the targeted eq. 8 inner minimisation (the paper's loss); "
        "era-authors = the authors' ERA (variant = \"authors\", docs/fidelity.md); era-shared = the paper's loss "
        "with the authors' untargeted shared inner point; trades-g<γ> / era-b<β> = the Fig. 2 sweep (seed 0). "
        "Paper Table 5 (CIFAR-10, ResNet-50, 1/255): ERA rob_sel 86.31 / sel_rob_acc 96.63, DGA 84.98 / 94.92.")})
    if (stage_dir / "fig2.png").is_file():
        blocks.append({"kind": "image", "path": "fig2.png",
                       "caption": "Robust accuracy vs robust inaccuracy of TRADES (triangles) and ERA (circles) fine-tunes"})
    return blocks


def _paired_table(recs: dict, study: Study) -> dict | None:
    """Each variant − trades, seed by seed, recomputed from the records (robust inaccuracy and
    robust accuracy, points; mean and 95% t-interval)."""
    if "trades" not in recs:
        return None
    eps = R.eps_of_columns(next(iter(recs["trades"].values())))[0]
    rows = []
    for variant in [v for v in study.finetunes if v != "trades" and v in recs]:
        seeds = sorted(set(recs[variant]) & set(recs["trades"]))
        if len(seeds) < 2:
            continue
        cells = []
        for metric in ("rob_inacc", "rob_acc"):
            d = paired_difference([R.partition_at(recs[variant][s], eps)[metric] for s in seeds],
                                  [R.partition_at(recs["trades"][s], eps)[metric] for s in seeds])
            cells.append(f"{100 * d['mean']:+.2f} [{100 * d['ci95_low']:+.2f}, {100 * d['ci95_high']:+.2f}]")
        rows.append([f"{variant} − trades", str(len(seeds)), *cells])
    if not rows:
        return None
    return {"kind": "table", "caption": "Paired differences to TRADES (same pre-trained weights per seed), "
            "percentage points: mean [95% t-interval]; below zero = fewer robust errors / less robust accuracy",
            "columns": ["difference", "seeds", "Δ rob_inacc", "Δ rob_acc"], "rows": rows, "paper": None}


def make_stage(study: Study) -> Stage:
    return Stage(name=study.name("finetune"),
                 title=f"{study.name('finetune')} — TRADES / ERA / DGA fine-tunes, S_ERI abstain metrics "
                       "(paper Tables 4, 5)",
                 depends=(study.pretrain_stage,) if study.pretrain_stage else (),
                 config=partial(config, study=study), run=R.one_thread(_run),
                 report=partial(report, study=study), expected_seconds=study.expected["finetune"])

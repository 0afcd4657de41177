"""Stage ``mnist1d-compose-2eps``: compositions as the paper builds them (Sec. 7.3, Tables 4/6):
the robust models are fine-tuned at 2ε and composed at ε.

From each TRADES pre-training of ``mnist1d-pretrain`` (``work/pretrain-s<seed>``, at 2ε = 0.04)
TRADES (γ = 6), ERA (β = 1, the paper's loss) and DGA (β = 1) are fine-tuned at 2ε (the study's
configs with ``loss.eps`` = 2ε, selected at the last epoch as in ``mnist1d-pareto``), evaluated on
the whole test set with APGD-CE 40 at ε and 2ε, and composed (eq. 15) at ε with the standard core
of ``mnist1d-partition`` through S_ERI (selected = robust at ε, robust selection = robust at 2ε).
Beside each: the same method fine-tuned at ε (``mnist1d-pareto``'s ``trades-g6`` / ``era-b1`` /
``dga-b1``, the setup of ``mnist1d-compose``). ``era_minus_trades_<setup>``: ERA_RI − TRADES_RI
compositions, natural and sound robust accuracy, per seed and with a bootstrap interval over
pre-training seeds (:func:`abstain.stats.hierarchical_bootstrap`).
Records: ``records/<method>-s<seed>.csv``, ``compose--<method>-s<seed>.csv``, ``core-s0.csv``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import stats
from ..composition import composition_columns
from ..metrics import mean_std
from ..selectors.evaluate import candidate, core_records
from . import _robust as R
from . import pareto
from .abstain_models import load_pretrained
from .base import Stage
from .compose import load_core

METHODS = {"trades": "trades-g6", "era": "era-b1", "dga": "dga-b1"}     # name in mnist1d-pareto


def config(scale: str, demo: bool) -> dict:
    up = pareto.config(scale, demo)
    eps = up["eps"]
    methods = {"trades": "trades", "era": "era"} if demo else {m: m for m in METHODS}
    specs = {m: {"config": pareto.CONFIGS[m][0], "set": {"loss.eps": 2 * eps, "train.select": "last"}} for m in methods}
    return {"eps": eps, "norm": "linf", "pretrain_seeds": up["pretrain_seeds"], "points": R.experiments(specs),
            "eval_steps": 40, "attack": R.PAPER_ATTACK, "compare_attack": None, "test_samples": None,
            "core_stage": pareto.PARTITION, "pretrain_stage": pareto.PRETRAIN, "n_boot": 2000}


def _run(ctx: Any, cfg: dict) -> dict:

    t0 = time.perf_counter()
    eps = cfg["eps"]
    first = next(iter(cfg["points"].values()))
    _, _, test = R.splits(first, 0)
    test = pareto._test_subset(test, cfg["test_samples"])
    core, _ = load_core(ctx.root, cfg["core_stage"], "std", 0, ctx.device)
    crec = core_records(core, test.x.to(ctx.device), test.y.to(ctx.device), np.arange(len(test)), eps=eps,
                        norm=cfg["norm"], steps=cfg["eval_steps"], seed=0, attack=cfg["attack"])
    ctx.write_records("core-s0", crec)
    y, cpred, crob = crec["label"], crec["pred"], R.robust_column(crec, eps)
    for seed in cfg["pretrain_seeds"]:
        base = load_pretrained(ctx.root, cfg["pretrain_stage"], seed)
        for name, c in cfg["points"].items():
            model = R.train_experiment(ctx, name, seed, c, init_from=base)
            cols = R.evaluate_records(ctx, model, test, eps=[eps], config=cfg, name=name, seed=seed, double_eps=True)
            cc = composition_columns(y, candidate(name, "eri", cols, eps), cpred, crob)
            ctx.write_records(f"compose--{name}-s{seed}", {"index": cols["index"], "label": y, "pred": cc["h_pred"],
                                                           "rob_acc": cc["h_robust_acc"],
                                                           "rob_acc_paper": cc["h_robust_acc_paper"]})
    res = summarize(ctx.out, ctx.stage_dir("mnist1d-pareto"), n_boot=cfg["n_boot"])
    res["meta"]["seconds"] = time.perf_counter() - t0
    return res


def _compositions(stage_dir: Path, names: dict[str, str]) -> dict[str, dict[int, dict[str, float]]]:
    comp = R.read_stage_records(stage_dir, "compose--")
    out: dict[str, dict[int, dict[str, float]]] = {}
    for method, name in names.items():
        for s, c in comp.get(name, {}).items():
            out.setdefault(method, {})[s] = {"nat_acc": float(np.mean(c["pred"] == c["label"])),
                                             "rob_acc": float(np.mean(c["rob_acc"].astype(bool))),
                                             "rob_acc_paper": float(np.mean(c["rob_acc_paper"].astype(bool)))}
    return out


def summarize(stage_dir: Path, pareto_dir: Path | None, n_boot: int = 2000) -> dict[str, Any]:
    """Compositions at ε of the 2ε fine-tunes (this stage) and of the ε fine-tunes
    (``mnist1d-pareto``, when its records exist), mean over seeds, and ERA_RI − TRADES_RI."""

    setups = {"2eps": _compositions(Path(stage_dir), {m: m for m in METHODS})}
    if pareto_dir is not None and (Path(pareto_dir) / "records").is_dir():
        setups["eps"] = _compositions(Path(pareto_dir), METHODS)
    res: dict[str, Any] = {}
    for setup, by_method in setups.items():
        for method, by_seed in by_method.items():
            res[f"compose-eri-{method}@{setup}"] = {**mean_std([by_seed[s] for s in sorted(by_seed)]),
                                                    "seeds": sorted(by_seed)}
        if {"era", "trades"} <= set(by_method):
            seeds = sorted(set(by_method["era"]) & set(by_method["trades"]))
            for metric in ("nat_acc", "rob_acc"):
                d = [by_method["era"][s][metric] - by_method["trades"][s][metric] for s in seeds]
                if d:
                    bs = stats.hierarchical_bootstrap([[v] for v in d], n_boot=n_boot, seed=0)
                    res[f"era_minus_trades_{metric}@{setup}"] = {"mean": bs["mean"], "ci95_low": bs["ci95_low"],
                                                                 "ci95_high": bs["ci95_high"], "per_seed": d}
    res["meta"] = {"setups": {"2eps": "robust models fine-tuned at 2ε, composed at ε (the paper's setup)",
                              "eps": "fine-tuned at ε (mnist1d-pareto's points; mnist1d-compose's setup)"},
                   "interval": "percentile bootstrap over pre-training seeds; one dataset draw"}
    return res


def report(stage_dir: Path) -> list[dict]:
    stage_dir = Path(stage_dir)
    if not (stage_dir / "records").is_dir():
        return [{"kind": "text", "text": "no mnist1d-compose-2eps records found"}]
    res = summarize(stage_dir, stage_dir.parent / "mnist1d-pareto")
    rows = [[k, f"{100 * v['nat_acc']:.2f}", f"{100 * v['rob_acc']:.2f}", f"{100 * v['rob_acc_paper']:.2f}",
             str(len(v["seeds"]))] for k, v in res.items() if k.startswith("compose-eri")]
    drows = [[k, f"{100 * v['mean']:+.2f} [{100 * v['ci95_low']:+.2f}, {100 * v['ci95_high']:+.2f}]",
              ", ".join(f"{100 * x:+.2f}" for x in v["per_seed"])] for k, v in res.items() if k.startswith("era_minus")]
    return [{"kind": "heading", "text": "MNIST-1D compositions as the paper builds them: fine-tuned at 2ε, composed at ε"},
            {"kind": "table", "caption": "Compositions with the core through S_ERI at ε (%): @2eps fine-tuned at 2ε, "
             "@eps at ε; mean over pre-training seeds", "columns": ["composition", "nat_acc", "rob_acc (sound)",
                                                                    "rob_acc (authors' count)", "seeds"],
             "rows": rows, "paper": None},
            {"kind": "table", "caption": "ERA_RI − TRADES_RI compositions (points): mean [bootstrap 95% over seeds], "
             "per seed; the paper (Sec. 7.3): +0.58 natural, −2.75 robust, a trade-off",
             "columns": ["difference", "Δ", "per seed"], "rows": drows, "paper": None}]


STAGE = Stage(name="mnist1d-compose-2eps",
              title="mnist1d-compose-2eps — compositions of models fine-tuned at 2ε, composed at ε (paper Sec. 7.3, "
                    "Tables 4, 6)",
              depends=(pareto.PARTITION, pareto.PRETRAIN, "mnist1d-pareto"), config=config, run=R.one_thread(_run), report=report,
              expected_seconds=(40.0, 200.0))

"""Stages ``<study>-partition`` (``digits-partition``, ``mnist1d-partition``): the
robustness–accuracy partition (paper Tables 1, 8) of a standard and of TRADES models over
several ℓ∞ radii, and the sweep that chooses the study's ε (:mod:`abstain.stages.study`).

Models: the standard model (``std``, the study's std config) and TRADES (eq. 7) from scratch
at every ε of the sweep (``trades-eps<ε>``; the study's trades config with its ε overridden);
``trades`` is the TRADES model at the study ε (``[loss] eps`` of that config, the ε of
``<study>-finetune``). Every model is evaluated on the test split with 40-step APGD-CE aimed
at the prediction (the paper's protocol), and with the strong default attack beside it:
the standard model at every ε, each TRADES model at its own ε.

Choice of ε (the study's ``eps_rule``, recomputed by the report from the records, which says
whether the configured study ε satisfies it):

- ``gap`` (digits, the fast regression): the largest ε of the sweep at which the TRADES model
  keeps ≥ 85% natural accuracy while robustness clearly differs from accuracy
  (R_nat − R_rob^acc ≥ 5 points, i.e. a visible non-robust part), and whose double 2ε — the
  pre-training radius of <study>-finetune — still gives a TRADES model with ≥ 50% robust
  accuracy (without that last condition the rule would pick the largest radius, where TRADES
  is hardly robust at all).
- ``table1`` (MNIST-1D, the study of the paper's effect; issue 19 asks for it): TRADES' robust
  inaccuracy inside the range of the paper's Table 1, [1%, 8%], at ≥ 80% natural accuracy;
  of those ε, the one with the largest robust inaccuracy. It looks at TRADES alone, so it is
  fixed before any ERA run.
"""
from __future__ import annotations

import time
from pathlib import Path
from functools import partial
from typing import Any

from . import _robust as R
from ..metrics import mean_std
from .base import Stage
from .study import Study

MIN_NAT_ACC = 0.85
MIN_GAP = 0.05
MIN_ROB_AT_2EPS = 0.5
TABLE1_RANGE = (0.01, 0.08)        # robust inaccuracy of the paper's Table 1 models
TABLE1_MIN_NAT_ACC = 0.80


def _experiments(study: Study) -> dict[str, dict]:
    return R.experiments({"std": {"config": study.std}, "trades": {"config": study.trades}})


def study_eps(study: Study) -> float:
    """The study ε: that of the study's TRADES config (and of its fine-tunes)."""
    return float(R.experiments({"trades": {"config": study.trades}})["trades"]["loss"]["eps"])


def config(scale: str, demo: bool, study: Study) -> dict:
    exps = _experiments(study)
    return {"seeds": [0], "norm": exps["trades"]["loss"]["norm"], "study_eps": exps["trades"]["loss"]["eps"],
            "sweep": list(study.demo_partition_sweep if demo else study.partition_sweep),
            # the demo trains as long as the full run (one seed, fewer ε): its models are the
            # core and the pre-training of the later stages, whose results need them converged
            "experiments": exps, "eval_steps": 40, "eps_rule": study.eps_rule,
            # the paper's APGD-CE for every number; the strong default attack beside it
            "attack": R.PAPER_ATTACK, "compare_attack": R.STRONG_ATTACK}


def _evaluate(ctx: Any, model: Any, test: Any, eps: list[float], config: dict, name: str, seed: int) -> dict:
    return R.evaluate_records(ctx, model, test, eps=eps, config=config, name=name, seed=seed, double_eps=False)


def _run(ctx: Any, config: dict) -> dict:
    t0 = time.perf_counter()
    norm, sweep, study = config["norm"], list(config["sweep"]), config["study_eps"]
    exps = config["experiments"]
    eps_all = sorted(set(sweep) | {study})
    per: dict[str, list[dict[str, float]]] = {}
    for seed in config["seeds"]:
        _, _, test = R.splits(exps["std"], seed)
        std = R.train_experiment(ctx, "std", seed, exps["std"])
        cols = _evaluate(ctx, std, test, eps_all, config, "std", seed)
        for e in eps_all:
            per.setdefault(f"std@{e:g}", []).append(R.partition_at(cols, e))
        per.setdefault("std", []).append(R.partition_at(cols, study))
        for e in R.progress_iter(ctx, eps_all, f"TRADES sweep s{seed}"):
            name = "trades" if e == study else f"trades-eps{e:g}"
            cfg = R.with_overrides(exps["trades"], {"loss.eps": e})
            cols = _evaluate(ctx, R.train_experiment(ctx, name, seed, cfg), test, [e], config, name, seed)
            per.setdefault(f"trades@{e:g}", []).append(R.partition_at(cols, e))
            if e == study:
                per.setdefault("trades", []).append(R.partition_at(cols, e))
    results: dict[str, Any] = {k: mean_std(v) for k, v in per.items()}
    rule = config["eps_rule"]
    chosen = choose_eps({e: results[f"trades@{e:g}"] for e in eps_all}, rule)
    results["meta"] = {"eps": study, "norm": norm, "seeds": config["seeds"], "sweep": eps_all,
                       "chosen_eps": chosen, "rule": RULES[rule], "n_test": len(test),
                       "eval": f"APGD-CE {config['eval_steps']} steps aimed at the prediction",
                       "seconds": time.perf_counter() - t0}
    return results


RULES = {
    "gap": (f"largest ε with TRADES nat_acc >= {MIN_NAT_ACC}, nat_acc - rob_acc >= {MIN_GAP}, and a "
            f"TRADES model at 2ε (the pre-training radius) with rob_acc >= {MIN_ROB_AT_2EPS}"),
    "table1": (f"TRADES rob_inacc in [{TABLE1_RANGE[0]:g}, {TABLE1_RANGE[1]:g}] (the paper's Table 1) at "
               f"nat_acc >= {TABLE1_MIN_NAT_ACC}; of those ε, the largest rob_inacc"),
}


def rule_ok(trades_by_eps: dict[float, dict[str, float]], e: float, rule: str = "gap") -> bool:
    """Whether ε = ``e`` satisfies the study's ε rule (module doc) on the TRADES partitions."""
    m = trades_by_eps.get(e)
    if m is None:
        return False
    if rule == "table1":
        return m["nat_acc"] >= TABLE1_MIN_NAT_ACC and TABLE1_RANGE[0] <= m["rob_inacc"] <= TABLE1_RANGE[1]
    m2 = trades_by_eps.get(round(2 * e, 10))
    return (m2 is not None and m["nat_acc"] >= MIN_NAT_ACC
            and m["nat_acc"] - m["rob_acc"] >= MIN_GAP and m2["rob_acc"] >= MIN_ROB_AT_2EPS)


def choose_eps(trades_by_eps: dict[float, dict[str, float]], rule: str = "gap") -> float | None:
    """The ε of the sweep that the study's rule picks (None: no ε satisfies it)."""
    ok = [e for e in trades_by_eps if rule_ok(trades_by_eps, e, rule)]
    if not ok:
        return None
    if rule == "table1":
        return max(ok, key=lambda e: (trades_by_eps[e]["rob_inacc"], e))
    return max(ok)


def report(stage_dir: Path, study: Study) -> list[dict]:
    stage_dir = Path(stage_dir)
    recs, strong, blocks = R.study_report_start(stage_dir, study.label, "robustness–accuracy partition over ε "
                                                "(Tables 1, 8 in miniature)", study.note)
    keys = ("nat_acc", "rob_acc", "rob_inacc", "nonrob_acc", "nonrob_inacc")
    rows, trades_by_eps = [], {}
    std = recs.get("std", {})
    trades_models, trades_names = {}, {}
    for variant, seeds in recs.items():
        if variant == "trades" or variant.startswith("trades-eps"):
            eps = R.eps_of_columns(next(iter(seeds.values())))[0]
            trades_models[eps], trades_names[eps] = seeds, variant
    for eps in sorted(set(trades_models) | (set(R.eps_of_columns(next(iter(std.values())))) if std else set())):
        if std:
            v = R.per_seed(std, lambda c, e=eps: R.partition_at(c, e))
            rows.append([f"{eps:g}", "std"] + [R.pct(v[k]) for k in keys]
                        + [R.strong_rob_inacc(strong, "std", eps), ""])
        if eps in trades_models:
            v = R.per_seed(trades_models[eps], lambda c, e=eps: R.partition_at(c, e))
            trades_by_eps[eps] = {k: sum(v[k]) / len(v[k]) for k in keys}
            rows.append([f"{eps:g}", "trades"] + [R.pct(v[k]) for k in keys]
                        + [R.strong_rob_inacc(strong, trades_names[eps], eps), eps])
    for r in rows:
        if r[1] == "trades":
            r[-1] = "yes" if rule_ok(trades_by_eps, r[-1], study.eps_rule) else "no"
    n_test = len(next(iter(next(iter(recs.values())).values()))["label"]) if recs else 0
    blocks.append({"kind": "table", "caption": f"Four-way partition on the {study.label} test set ({n_test} samples), "
                   "APGD-CE 40 steps aimed at the prediction (the paper's protocol; 'strong': robust inaccuracy under "
                   "the strong default attack, docs/attacks.md); 'rule': whether the ε satisfies the study's ε rule: "
                   + RULES[study.eps_rule],
                   "columns": ["ε∞", "model", "nat_acc %", "rob_acc %", "rob_inacc %", "nonrob_acc %",
                               "nonrob_inacc %", "rob_inacc % (strong)", "rule"], "rows": rows, "paper": None})
    chosen, eps_study = choose_eps(trades_by_eps, study.eps_rule), study_eps(study)
    blocks.append({"kind": "text", "text": (
        f"ε chosen by the rule ({RULES[study.eps_rule]}): "
        f"{'none' if chosen is None else f'{chosen:g}'}; the study ε of {study.name('finetune')} is {eps_study:g}"
        + (" (satisfies the rule)." if rule_ok(trades_by_eps, eps_study, study.eps_rule)
           else " (does NOT satisfy the rule).")
        + f" Models: configs/{study.std}.toml (std) and configs/{study.trades}.toml (TRADES from scratch, its ε "
          "set to each ε of the sweep).")})
    return blocks


def make_stage(study: Study) -> Stage:
    return Stage(name=study.name("partition"),
                 title=f"{study.name('partition')} — four-way partition of standard and TRADES models over ε "
                       "(paper Tables 1, 8)",
                 depends=(), config=partial(config, study=study), run=R.one_thread(_run),
                 report=partial(report, study=study), expected_seconds=study.expected["partition"])

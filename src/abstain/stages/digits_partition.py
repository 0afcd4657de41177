"""Stage ``digits-partition``: the robustness–accuracy partition (paper Tables 1, 8) of a
standard and of TRADES models on ``digits`` over several ℓ∞ radii, and the sweep that
chooses the study's ε.

Models: the digits CNN (width 16) trained with CE (``std``) and with TRADES (eq. 7,
γ = 6) from scratch at every ε of the sweep (``trades-eps<ε>``); ``trades`` is the TRADES
model at the study ε (``[loss] eps`` of ``configs/digits-trades.toml``, the ε of
``digits-finetune``). The models and their training come from ``configs/digits-std.toml``
and ``configs/digits-trades.toml`` (the sweep overrides its ε). Every model is
evaluated on the 450 test images with 40-step APGD aimed at the prediction: the standard
model at every ε, each TRADES model at its own ε.

Choice of ε: the largest ε of the sweep at which the TRADES model keeps ≥ 85% natural
accuracy while robustness clearly differs from accuracy (R_nat − R_rob^acc ≥ 5 points,
i.e. a visible non-robust part), and whose double 2ε — the pre-training radius of
digits-finetune — still gives a TRADES model with ≥ 50% robust accuracy (without that
last condition the rule would pick the largest radius, where TRADES is hardly robust at
all). The report recomputes the rule from the records and says whether the configured
study ε satisfies it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from . import _robust as R
from .base import Stage

NAME = "digits-partition"
MIN_NAT_ACC = 0.85
MIN_GAP = 0.05
MIN_ROB_AT_2EPS = 0.5
EXPERIMENTS = {"std": {"config": "digits-std"}, "trades": {"config": "digits-trades"}}


def study_eps() -> float:
    """The study ε: that of ``configs/digits-trades.toml`` (and of digits-finetune's fine-tunes)."""
    return float(R.experiments({"trades": EXPERIMENTS["trades"]})["trades"]["loss"]["eps"])


def config(scale: str, demo: bool) -> dict:
    exps = R.experiments(EXPERIMENTS)
    return {"seeds": [0], "norm": exps["trades"]["loss"]["norm"], "study_eps": exps["trades"]["loss"]["eps"],
            "sweep": [0.1, 0.2] if demo else [0.05, 0.1, 0.15, 0.2, 0.3],
            # the demo trains as long as the full run (one seed, fewer ε): its models are the
            # core and the pre-training of the later stages, whose results need them converged
            "experiments": exps, "eval_steps": 40,
            # the paper's APGD-CE for every number; the strong default attack beside it
            "attack": R.PAPER_ATTACK, "compare_attack": R.STRONG_ATTACK}


def _evaluate(ctx: Any, model: Any, test: Any, eps: list[float], config: dict, name: str, seed: int) -> dict:
    return R.evaluate_records(ctx, model, test, eps=eps, config=config, name=name, seed=seed, double_eps=False)


def _run(ctx: Any, config: dict) -> dict:
    from ..metrics import mean_std

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
    chosen = choose_eps({e: results[f"trades@{e:g}"] for e in eps_all})
    results["meta"] = {"eps": study, "norm": norm, "seeds": config["seeds"], "sweep": eps_all,
                       "chosen_eps": chosen, "rule": RULE, "n_test": 450,
                       "eval": f"APGD-CE {config['eval_steps']} steps aimed at the prediction",
                       "seconds": time.perf_counter() - t0}
    return results


RULE = (f"largest ε with TRADES nat_acc >= {MIN_NAT_ACC}, nat_acc - rob_acc >= {MIN_GAP}, and a "
        f"TRADES model at 2ε (the pre-training radius) with rob_acc >= {MIN_ROB_AT_2EPS}")


def rule_ok(trades_by_eps: dict[float, dict[str, float]], e: float) -> bool:
    m, m2 = trades_by_eps.get(e), trades_by_eps.get(round(2 * e, 10))
    return (m is not None and m2 is not None and m["nat_acc"] >= MIN_NAT_ACC
            and m["nat_acc"] - m["rob_acc"] >= MIN_GAP and m2["rob_acc"] >= MIN_ROB_AT_2EPS)


def choose_eps(trades_by_eps: dict[float, dict[str, float]]) -> float | None:
    ok = [e for e in trades_by_eps if rule_ok(trades_by_eps, e)]
    return max(ok) if ok else None


def report(stage_dir: Path) -> list[dict]:
    stage_dir = Path(stage_dir)
    recs = R.read_stage_records(stage_dir)
    strong = R.read_stage_records(stage_dir, R.STRONG_PREFIX)
    blocks: list[dict] = [{"kind": "heading", "text": "Digits: robustness–accuracy partition over ε (Tables 1, 8 in miniature)"}]
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
            r[-1] = "yes" if rule_ok(trades_by_eps, r[-1]) else "no"
    blocks.append({"kind": "table", "caption": "Four-way partition on the digits test set (450 images), "
                   "APGD-CE 40 steps aimed at the prediction (the paper's protocol; 'strong': robust inaccuracy under "
                   "the strong default attack, docs/attacks.md); 'rule': TRADES keeps >= 85% natural accuracy, "
                   "R_nat − R_rob^acc >= 5 points, and TRADES at 2ε keeps >= 50% robust accuracy",
                   "columns": ["ε∞", "model", "nat_acc %", "rob_acc %", "rob_inacc %", "nonrob_acc %",
                               "nonrob_inacc %", "rob_inacc % (strong)", "rule"], "rows": rows, "paper": None})
    chosen, study = choose_eps(trades_by_eps), study_eps()
    blocks.append({"kind": "text", "text": (
        f"ε chosen by the rule (largest ε of the sweep that satisfies it): "
        f"{'none' if chosen is None else f'{chosen:g}'}; the study ε of digits-finetune is {study:g}"
        + (" (satisfies the rule)." if rule_ok(trades_by_eps, study) else " (does NOT satisfy the rule).")
        + " Models: digits CNN (width 16); std = CE, 30 epochs; TRADES (γ = 6, 10-step PGD; 15 epochs) from scratch "
          "at each ε.")})
    return blocks


STAGE = Stage(name=NAME, title="digits-partition — four-way partition of standard and TRADES models over ε (paper Tables 1, 8)",
              depends=(), config=config, run=R.one_thread(_run), report=report,
              expected_seconds=(40.0, 300.0))

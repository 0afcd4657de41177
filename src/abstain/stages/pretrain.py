"""Stage ``mnist1d-pretrain``: the TRADES pre-trainings at 2ε that every MNIST-1D fine-tune
starts from, trained once and shared (issue 23, the ``make reproduce`` budget).

``configs/mnist1d-trades-pretrain.toml`` (TRADES, eq. 7, γ = 6, from scratch at 2ε = 0.04, 20
epochs) per pre-training seed (0, 1, 2; the demo: 0) into ``work/pretrain-s<seed>``, each
evaluated on the whole test set with APGD-CE 40 at ε and 2ε (``records/pretrain-s<seed>.csv``;
the strong attack beside it outside the demo, ``strong--…``). Read by ``mnist1d-finetune``
(seed 0, shared by its fine-tune seeds), ``mnist1d-pareto`` (the fronts, one per seed),
``mnist1d-certify`` and ``mnist1d-compose-2eps`` through
:func:`abstain.stages.abstain_models.load_pretrained`. Before this stage, ``mnist1d-pareto`` and
``mnist1d-finetune`` each trained the same seed-0 model (same config, same seed), and
``mnist1d-certify`` waited for the whole of ``mnist1d-pareto``; now it runs beside it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from . import _robust as R
from ..metrics import mean_std
from .base import Stage

NAME = "mnist1d-pretrain"
CONFIG = "mnist1d-trades-pretrain"


def config(scale: str, demo: bool) -> dict:
    """The pre-training config (unchanged: the demo pre-trains all 20 epochs as
    ``mnist1d-finetune``'s demo did), the seeds, and the evaluation at the study's ε (that of
    ``configs/mnist1d-trades-finetune.toml``, half the pre-training's)."""
    exps = R.experiments({"p": {"config": CONFIG}, "f": {"config": "mnist1d-trades-finetune"}})
    eps = float(exps["f"]["loss"]["eps"])
    if abs(exps["p"]["loss"]["eps"] - 2 * eps) > 1e-12:
        raise ValueError(f"{CONFIG} must pre-train at 2ε = {2 * eps:g}, not {exps['p']['loss']['eps']:g}")
    return {"pretrain": exps["p"], "seeds": [0] if demo else [0, 1, 2], "eps": eps, "norm": "linf",
            "eval_steps": 40, "attack": R.PAPER_ATTACK, "compare_attack": None if demo else R.STRONG_ATTACK}


def _run(ctx: Any, cfg: dict) -> dict:
    t0 = time.perf_counter()
    eps = cfg["eps"]
    per = []
    for seed in R.progress_iter(ctx, list(cfg["seeds"]), "MNIST-1D pre-trainings"):
        model = R.train_experiment(ctx, "pretrain", seed, cfg["pretrain"])
        _, _, test = R.splits(cfg["pretrain"], seed)
        cols = R.evaluate_records(ctx, model, test, eps=[eps], config=cfg, name="pretrain", seed=seed,
                                  double_eps=True)
        per.append(R.partition_at(cols, eps))
    return {"pretrain": mean_std(per),
            "meta": {"seeds": list(cfg["seeds"]), "eps": eps, "pretrain_eps": cfg["pretrain"]["loss"]["eps"],
                     "epochs": cfg["pretrain"]["train"]["epochs"], "seconds": time.perf_counter() - t0,
                     "eval": f"APGD-CE {cfg['eval_steps']} steps aimed at the prediction, ε and 2ε"}}


def report(stage_dir: Path) -> list[dict]:
    """The partition at ε of each pre-trained model, from its records."""
    recs = R.read_stage_records(Path(stage_dir)).get("pretrain", {})
    if not recs:
        return [{"kind": "text", "text": "no mnist1d-pretrain records found"}]
    eps = R.eps_of_columns(next(iter(recs.values())))[0]
    rows = [[str(s)] + [f"{100 * p[k]:.2f}" for k in ("nat_acc", "rob_acc", "rob_inacc")]
            for s, p in ((s, R.partition_at(recs[s], eps)) for s in sorted(recs))]
    return [{"kind": "heading", "text": "MNIST-1D: the shared TRADES pre-trainings at 2ε"},
            {"kind": "table", "caption": f"TRADES pre-trained at 2ε, evaluated at ε∞ = {eps:g} (APGD-CE 40; %)",
             "columns": ["seed", "nat_acc", "rob_acc", "rob_inacc"], "rows": rows, "paper": None}]


STAGE = Stage(name=NAME, title="mnist1d-pretrain — the TRADES pre-trainings at 2ε shared by the MNIST-1D fine-tunes",
              depends=(), config=config, run=R.one_thread(_run), report=report, expected_seconds=(100.0, 260.0))

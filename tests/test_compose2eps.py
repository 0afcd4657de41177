"""Stage mnist1d-compose-2eps on a tiny config: the robust models are fine-tuned at 2ε, composed
at ε with the core; ERA_RI − TRADES_RI recomputed by hand from the records."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from abstain.records import read_records
from abstain.stages import StageContext, get
from abstain.stages import _robust as R
from abstain.stages import compose2eps as C


def _tiny(cfg: dict) -> dict:
    return {**cfg, "data": {**cfg["data"], "val_fraction": 0.95},
            "train": {**cfg["train"], "epochs": 1, "val_steps": 1},
            "loss": {**cfg["loss"], **({"steps": 2} if cfg["loss"].get("eps") else {})}}


def test_config_fine_tunes_at_twice_the_composition_radius():
    cfg = C.config("mini", False)
    assert set(cfg["points"]) == {"trades", "era", "dga"} and cfg["pretrain_seeds"] == [0, 1, 2]
    assert {c["loss"]["eps"] for c in cfg["points"].values()} == {2 * cfg["eps"]} and cfg["eps"] == 0.02
    assert {c["train"]["select"] for c in cfg["points"].values()} == {"last"}
    assert get("mnist1d-compose-2eps").depends == ("mnist1d-partition", "mnist1d-pretrain", "mnist1d-pareto")


def test_tiny_run_composes_at_eps(tmp_path: Path):
    root = tmp_path
    std = _tiny(R.experiments({"s": {"config": "mnist1d-std"}})["s"])
    R.train_experiment(StageContext(name="mnist1d-partition", out=root / "mnist1d-partition", root=root), "std", 0, std)
    pre = _tiny(R.experiments({"p": {"config": "mnist1d-trades-pretrain"}})["p"])
    R.train_experiment(StageContext(name="mnist1d-pretrain", out=root / "mnist1d-pretrain", root=root), "pretrain", 0, pre)
    cfg = C.config("mini", True)
    cfg.update({"points": {k: _tiny(v) for k, v in cfg["points"].items()}, "pretrain_seeds": [0], "eval_steps": 2,
                "test_samples": 40, "n_boot": 50})
    ctx = StageContext(name="mnist1d-compose-2eps", out=root / "mnist1d-compose-2eps", root=root)
    res = C.STAGE.run(ctx, cfg)
    era, trades = (read_records(ctx.out / f"records/{m}-s0.csv") for m in ("era", "trades"))
    core = read_records(ctx.out / "records/core-s0.csv")
    comp = read_records(ctx.out / "records/compose--era-s0.csv")
    sel = era["robust@0.02"].astype(bool)                    # selected at ε, the composition radius
    assert np.array_equal(comp["pred"][sel], era["pred"][sel]) and np.array_equal(comp["pred"][~sel], core["pred"][~sel])
    # sound robust accuracy: robustly selected (robust at 2ε) and right, or not selectable at all and the core robust
    ok = (sel & era["robust@0.04"].astype(bool) & (era["pred"] == era["label"]))
    assert (comp["rob_acc"].astype(bool) >= ok).all()
    d = res["era_minus_trades_nat_acc@2eps"]
    tcomp = read_records(ctx.out / "records/compose--trades-s0.csv")
    assert d["mean"] == pytest.approx(np.mean(comp["pred"] == comp["label"]) - np.mean(tcomp["pred"] == tcomp["label"]))
    assert trades["robust@0.04"].shape == (40,)
    assert C.report(ctx.out)[1]["rows"][0][0].startswith("compose-eri-")

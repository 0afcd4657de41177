"""Stage mnist1d-certify on a tiny config (1-epoch fine-tunes of a 1-epoch pre-training, 20
test signals, N = 500): the issue's results keys, the radius rule 2ε ≤ 3.5σ, and the CRA − noise
difference and McNemar test recomputed by hand from the records."""
from __future__ import annotations

from pathlib import Path

import pytest

from abstain import stats
from abstain.records import read_records
from abstain.stages import StageContext, get
from abstain.stages import _robust as R
from abstain.stages import mnist1d_certify as C


def _tiny(cfg: dict) -> dict:
    return {**cfg, "data": {**cfg["data"], "val_fraction": 0.95},
            "train": {**cfg["train"], "epochs": 1, "val_steps": 1},
            "loss": {**cfg["loss"], **({"k": 2} if "k" in cfg["loss"] and cfg["loss"]["k"] else {}),
                     **({"steps": 2} if cfg["loss"].get("eps") else {})}}


def test_config_follows_the_issue_and_the_radius_rule():
    cfg = C.config("mini", False)
    assert cfg["sigmas"] == [0.01, 0.02] and cfg["seeds"] == [0, 1, 2] and cfg["samples"] == 500
    assert cfg["cra_betas"] == [0.25, 1.0, 4.0] and cfg["n"] == 100_000 and cfg["alpha"] == 0.001
    assert all(2 * max(cfg["eps"]) <= 3.5 * s for s in cfg["sigmas"])
    names = [v for v, _, _ in C._models(cfg)]
    assert "noise@0.01" in names and "cra-b1@0.02" in names and "cra-authors@0.02" in names
    exps = {v: e for v, e, _ in C._models(cfg)}
    assert exps["cra-authors@0.01"]["loss"]["variant"] == "authors" and exps["cra-b4@0.02"]["loss"]["beta"] == 4.0
    assert {e["train"]["epochs"] for e in exps.values()} == {5}                    # equal epochs
    assert get("mnist1d-certify").depends == ("mnist1d-pretrain",)


def test_tiny_run_and_the_difference_by_hand(tmp_path: Path):
    root = tmp_path
    pre = _tiny(R.experiments({"p": {"config": "mnist1d-trades-pretrain"}})["p"])
    R.train_experiment(StageContext(name="mnist1d-pretrain", out=root / "mnist1d-pretrain", root=root), "pretrain", 0, pre)
    cfg = C.config("mini", True)
    cfg["experiments"] = {k: _tiny(v) for k, v in cfg["experiments"].items()}
    cfg.update({"samples": 20, "n": 500, "n0": 50, "n_boot": 100})
    ctx = StageContext(name="mnist1d-certify", out=root / "mnist1d-certify", root=root)
    res = C.STAGE.run(ctx, cfg)
    for v in ("noise@0.02", "cra-b1@0.02"):
        assert {"nat_acc", "rob_acc", "rob_inacc", "rob_sel", "sel_acc"} <= set(res[v])
    d = res["cra_minus_noise_rob_inacc@0.02"]
    assert {"mean", "ci95_low", "ci95_high", "mcnemar_p"} <= set(d)
    flags = {}
    for v in ("noise", "cra-b1"):
        r = read_records(ctx.out / f"records/certify-{v}_at_0.02-s0.csv")
        assert len(r["label"]) == 20
        flags[v] = (r["pred"] != r["label"]) & r["certified@0.005"].astype(bool)
    assert d["mean"] == pytest.approx(flags["cra-b1"].mean() - flags["noise"].mean())
    assert d["mcnemar_p"] == stats.mcnemar_exact(flags["cra-b1"], flags["noise"])["p"]
    assert res["noise@0.02"]["rob_inacc"] == pytest.approx(flags["noise"].mean())
    # robust selection certified at 2ε never exceeds the paper's at ε
    assert res["noise@0.02"]["rob_sel"] <= res["noise@0.02"]["rob_sel_eps"] + 1e-12
    table = C.report(ctx.out)[1]
    row = next(r for r in table["rows"] if r[0] == "noise@0.02" and r[1] == "0.005")
    assert row[4] == f"{100 * res['noise@0.02']['rob_inacc']:.2f}"


def test_missing_pretraining_is_a_clear_error(tmp_path: Path):
    from abstain.errors import DataError

    cfg = C.config("mini", True)
    with pytest.raises(DataError, match="mnist1d-pretrain"):
        C.STAGE.run(StageContext(name="mnist1d-certify", out=tmp_path / "c", root=tmp_path), cfg)

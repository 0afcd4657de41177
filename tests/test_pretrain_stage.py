"""Stage mnist1d-pretrain: the TRADES pre-trainings at 2ε that the MNIST-1D stages share (one
config, the seeds of mnist1d-pareto, mnist1d-certify and compose-2eps, seed 0 for
mnist1d-finetune), and a tiny run whose checkpoint the fine-tuning stages load."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from abstain.records import read_records
from abstain.stages import StageContext, compose2eps, get, mnist1d_certify, of_scale, pareto, pretrain
from abstain.stages import _robust as R
from abstain.stages.abstain_models import load_pretrained


def test_one_pretraining_config_for_every_mnist1d_stage():
    for demo in (False, True):
        cfg = pretrain.config("mini", demo)
        assert cfg["pretrain"]["loss"]["eps"] == pytest.approx(2 * cfg["eps"]) and cfg["eps"] == 0.02
        assert cfg["pretrain"]["train"]["epochs"] == 20
        assert pareto.config("mini", demo)["pretrain_seeds"] == cfg["seeds"]
        assert compose2eps.config("mini", demo)["pretrain_seeds"] == cfg["seeds"]
        assert set(mnist1d_certify.config("mini", demo)["seeds"]) <= set(cfg["seeds"])
        ft = get("mnist1d-finetune").config("mini", demo)
        assert ft["pretrain"] == cfg["pretrain"] and ft["shared_pretrain"] and ft["seeds"][0] in cfg["seeds"]
    assert pretrain.config("mini", False)["seeds"] == [0, 1, 2]
    for name in ("mnist1d-finetune", "mnist1d-pareto", "mnist1d-certify", "mnist1d-compose-2eps"):
        assert "mnist1d-pretrain" in get(name).depends
    names = [s.name for s in of_scale("mini")]
    assert names.index("mnist1d-pretrain") < names.index("mnist1d-finetune")
    assert get("digits-finetune").depends == ()                # digits keeps its own pre-training


def test_tiny_run_writes_what_the_fine_tunes_load(tmp_path: Path):
    cfg = pretrain.config("mini", True)
    p = cfg["pretrain"]
    cfg["pretrain"] = {**p, "data": {**p["data"], "val_fraction": 0.95}, "train": {**p["train"], "epochs": 1,
                       "val_steps": 1}, "loss": {**p["loss"], "steps": 1}}
    cfg["eval_steps"] = 2
    ctx = StageContext(name="mnist1d-pretrain", out=tmp_path / "mnist1d-pretrain", root=tmp_path)
    res = pretrain.STAGE.run(ctx, cfg)
    rec = read_records(ctx.out / "records/pretrain-s0.csv")
    ri = np.mean((rec["pred"] != rec["label"]) & rec["robust@0.02"].astype(bool))
    assert res["pretrain"]["rob_inacc"] == pytest.approx(ri) and "robust@0.04" in rec
    model = load_pretrained(tmp_path, "mnist1d-pretrain", 0)
    assert all(q.requires_grad for q in model.parameters())
    blocks = pretrain.report(ctx.out)
    assert blocks[1]["rows"][0][3] == f"{100 * ri:.2f}"
    assert R.read_stage_records(ctx.out)["pretrain"][0]["label"].shape == rec["label"].shape

"""Stage mnist1d-pareto end to end on a tiny config (1-epoch trainings, 2-step attacks, 60 test
signals, two pre-training seeds), the results.json schema of issue 23, and the report and
summary recomputed from the records."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from abstain import stats
from abstain.records import read_records
from abstain.stages import StageContext, get
from abstain.stages import _robust as R
from abstain.stages import pareto, tau_fronts


def _tiny(cfg: dict, epochs: int = 1, steps: int = 2) -> dict:
    # 360 training signals; the rest is a validation split read once per epoch with a 1-step PGD
    return {**cfg, "data": {**cfg["data"], "val_fraction": 0.95},
            "train": {**cfg["train"], "epochs": epochs, "val_steps": 1}, "loss": {**cfg["loss"], "steps": steps}}


@pytest.fixture(scope="module")
def stage_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pareto")
    std_cfg = _tiny(R.experiments({"s": {"config": "mnist1d-std"}})["s"])
    R.train_experiment(StageContext(name="mnist1d-partition", out=root / "mnist1d-partition", root=root),
                       "std", 0, std_cfg)
    pre = _tiny(R.experiments({"p": {"config": "mnist1d-trades-pretrain"}})["p"])
    for s in (0, 1):
        R.train_experiment(StageContext(name="mnist1d-pretrain", out=root / "mnist1d-pretrain", root=root),
                           "pretrain", s, pre)
    cfg = pareto.config("mini", False)
    methods = {"trades": [["trades-g1", 1.0], ["trades-g6", 6.0]], "era": [["era-b0.25", 0.25], ["era-b4", 4.0]],
               "dga": [["dga-b1", 1.0]]}
    cfg.update({"pretrain_seeds": [0, 1], "eval_steps": 2, "test_samples": 60,
                "compare_attack": None, "n_boot": 200, "methods": methods,
                "points": {n: _tiny(cfg["points"][n]) for ps in methods.values() for n, _ in ps},
                "tau_fronts": {**cfg["tau_fronts"], "steps": 2,                 # = eval_steps "sn": {"epochs": 2, "hidden": 16, "samples": 100},
                               "tau_points": 10}})
    ctx = StageContext(name="mnist1d-pareto", out=root / "mnist1d-pareto", root=root)
    res = pareto.STAGE.run(ctx, cfg)
    return ctx.out, res, cfg


def test_config_is_the_issue_grid_with_one_selection_rule():
    cfg = pareto.config("mini", False)
    assert cfg["pretrain_seeds"] == [0, 1, 2] and cfg["eps"] == 0.02
    assert [p for _, p in cfg["methods"]["trades"]] == [0.5, 1, 2, 4, 6, 12, 24]
    assert [p for _, p in cfg["methods"]["era"]] == [0.1, 0.25, 0.5, 1, 2, 4]
    assert [p for _, p in cfg["methods"]["dga"]] == [p for _, p in cfg["methods"]["era-authors"]] == [0.25, 1, 4]
    assert {c["train"]["select"] for c in cfg["points"].values()} == {"last"}
    assert cfg["points"]["era-authors-b1"]["loss"]["variant"] == "authors"
    assert cfg["points"]["trades-g12"]["loss"]["gamma"] == 12.0
    demo = pareto.config("mini", True)
    assert len(demo["points"]) == 2 and demo["pretrain_seeds"] == [0]
    assert cfg["pretrain_stage"] == "mnist1d-pretrain"
    assert get("mnist1d-pareto").depends == ("mnist1d-partition", "mnist1d-pretrain")
    for c in (cfg, demo):       # the selectors attack like the evaluation: same robust@ε
        assert c["tau_fronts"]["steps"] == c["eval_steps"] and c["tau_fronts"]["attack"] == c["attack"]
        assert c["tau_fronts"]["point"] in c["points"]


def test_results_schema_and_numbers_recomputed_from_records(stage_dir):
    out, res, cfg = stage_dir
    assert set(res) >= {"fronts", "matched", "budget", "core", "meta"} and res["meta"]["pretrain_seeds"] == [0, 1]
    assert set(res["fronts"]) == {"trades", "era", "dga"}
    keys = {"param", "nat_acc", "rob_acc", "rob_inacc", "compose_nat_acc", "compose_rob_acc"}
    for pts in res["fronts"].values():
        for p in pts:
            assert keys <= set(p) and all(f"{k}_std" in p for k in keys - {"param"})
    # one point by hand from its records
    recs = [read_records(out / f"records/era-b4-s{s}.csv") for s in (0, 1)]
    ri = [np.mean((r["pred"] != r["label"]) & r["robust@0.02"].astype(bool)) for r in recs]
    era4 = next(p for p in res["fronts"]["era"] if p["param"] == 4.0)
    assert era4["rob_inacc"] == pytest.approx(np.mean(ri)) and era4["rob_inacc_std"] == pytest.approx(np.std(ri))
    # the composition through S_ERI: selected (robust at ε) -> the robust model's prediction
    comp = read_records(out / "records/compose--era-b4-s0.csv")
    core = read_records(out / "records/core-s0.csv")
    sel = recs[0]["robust@0.02"].astype(bool)
    assert np.array_equal(comp["pred"][sel], recs[0]["pred"][sel])
    assert np.array_equal(comp["pred"][~sel], core["pred"][~sel])
    sound = comp["rob_acc"].astype(bool)
    assert not (sound & (comp["pred"] != comp["label"])).any()
    assert res["core"]["nat_acc"] == pytest.approx(np.mean(core["pred"] == core["label"]))
    for k in ("trades@0.5", "era@1.0", "dga@1.0"):
        assert {"mean", "ci95_low", "ci95_high"} <= set(res["budget"][k])
    for k, v in res["matched"].items():
        assert k.endswith(tuple(f"@{lv:g}" for lv in res["meta"]["levels"]))
        assert len(v["per_seed"]) == 2 and v["ci95_low"] <= v["mean"] <= v["ci95_high"]
    for k in res["matched"]:
        method, level = k.split("_minus_")[0].replace("_", "-"), float(k.rsplit("@", 1)[1])
        other = k.split("_minus_")[1].split("_rob_inacc")[0]
        by_hand = []
        for s in (0, 1):
            def at(m, s=s):
                pts = [read_records(out / f"records/{n}-s{s}.csv") for n, _ in cfg["methods"][m]]
                ra = [np.mean((r["pred"] == r["label"]) & r["robust@0.02"].astype(bool)) for r in pts]
                rin = [np.mean((r["pred"] != r["label"]) & r["robust@0.02"].astype(bool)) for r in pts]
                return stats.front_at(ra, rin, level, "lower")
            by_hand.append(at(method) - at(other))
        assert res["matched"][k]["per_seed"] == pytest.approx(by_hand)


def test_report_recomputes_the_stage_results(stage_dir):
    out, res, _ = stage_dir
    blocks = pareto.report(out)
    table = next(b for b in blocks if b["kind"] == "table")
    row = next(r for r in table["rows"] if r[0] == "trades" and r[1] == "6")
    p = next(p for p in res["fronts"]["trades"] if p["param"] == 6.0)
    assert row[4] == f"{100 * p['rob_inacc']:.2f} ± {100 * p['rob_inacc_std']:.2f}"
    assert (out / "fig2_fronts.png").stat().st_size > 10_000 and (out / "fig4_fronts.png").stat().st_size > 10_000
    # the report's summary is the run's: both recomputed from the same records
    again = pareto.summarize(out, _cfg_methods(stage_dir), n_boot=200)
    assert json.dumps(again["fronts"]) == json.dumps(res["fronts"])
    assert json.dumps(again["budget"]) == json.dumps(res["budget"])          # NaN where no point fits


def _cfg_methods(stage_dir):
    return stage_dir[2]["methods"]


def _write(path: Path, n_correct_robust: int, n_wrong_robust: int, n_correct: int | None = None, n: int = 100) -> None:
    """Records of ``n`` label-0 signals: the first ``n_correct`` predicted right (default: the
    robust ones), the first ``n_correct_robust`` of them robust, and ``n_wrong_robust`` robust errors."""
    from abstain.records import write_records

    n_correct = n_correct_robust if n_correct is None else n_correct
    pred = np.ones(n, dtype=np.int64)
    pred[:n_correct] = 0
    robust = np.zeros(n, dtype=bool)
    robust[:n_correct_robust] = True
    robust[n_correct:n_correct + n_wrong_robust] = True
    write_records(path, {"index": np.arange(n), "label": np.zeros(n, dtype=np.int64), "pred": pred,
                         "robust@0.02": robust, "robust@0.04": robust})


def _write_compose(path: Path, nat: int, rob: int, n: int = 100) -> None:
    from abstain.records import write_records

    pred = np.ones(n, dtype=np.int64)
    pred[:nat] = 0
    ok = np.zeros(n, dtype=bool)
    ok[:rob] = True
    write_records(path, {"index": np.arange(n), "label": np.zeros(n, dtype=np.int64), "pred": pred,
                         "rob_acc": ok, "rob_acc_paper": ok})


def test_matched_fronts_and_budget_on_hand_written_records(tmp_path):
    rec = tmp_path / "records"
    rec.mkdir()
    _write(rec / "core-s0.csv", 30, 0, n_correct=90)                    # core: 90% natural, 30% robust
    # (robust accuracy, robust inaccuracy) in points per seed; compositions (natural, sound robust)
    pts = {"trades-g1": [((40, 4), (90, 50)), ((40, 6), (90, 45))],
           "trades-g6": [((60, 6), (88, 60)), ((60, 8), (88, 55))],
           "era-b1": [((40, 2), (89, 52)), ((40, 2), (90, 40))],
           "era-b4": [((60, 2), (85, 70)), ((60, 4), (88, 58))]}
    for name, per_seed in pts.items():
        for s, ((ra, ri), (cn, cr)) in enumerate(per_seed):
            _write(rec / f"{name}-s{s}.csv", ra, ri)
            _write_compose(rec / f"compose--{name}-s{s}.csv", cn, cr)
    methods = {"trades": [["trades-g1", 1.0], ["trades-g6", 6.0]], "era": [["era-b1", 1.0], ["era-b4", 4.0]]}
    res = pareto.summarize(tmp_path, methods, n_boot=500)
    assert res["meta"]["levels"] == [0.45, 0.5, 0.55] and res["meta"]["pretrain_seeds"] == [0, 1]
    # at 0.5: seed 0 trades 5, era 2 -> -3 points; seed 1 trades 7, era 3 -> -4 points
    m = res["matched"]["era_minus_trades_rob_inacc@0.5"]
    assert m["per_seed"] == pytest.approx([-0.03, -0.04]) and m["mean"] == pytest.approx(-0.035)
    assert m["ci95_low"] == pytest.approx(-0.04) and m["ci95_high"] == pytest.approx(-0.03)
    assert 0 < m["holm_p"] <= 1
    assert res["core"] == {"nat_acc": 0.9, "rob_acc": 0.3}
    # compositions with natural accuracy >= 89.5 / 89 (the core's 90 minus 0.5 / 1 point)
    assert res["budget"]["trades@0.5"]["per_seed"] == pytest.approx([0.50, 0.45])
    assert res["budget"]["trades@1.0"]["per_seed"] == pytest.approx([0.50, 0.45])   # 88 is outside
    assert res["budget"]["era@1.0"]["per_seed"] == pytest.approx([0.52, 0.40])     # seed 1: b4 at 88 is outside
    assert res["budget"]["era@0.5"]["per_seed"] == pytest.approx([float("nan"), 0.40], nan_ok=True)
    assert np.isnan(res["budget"]["era@0.5"]["mean"])
    era1 = next(p for p in res["fronts"]["era"] if p["param"] == 1.0)
    assert era1["compose_nat_acc"] == pytest.approx(0.895) and era1["compose_rob_acc_std"] == pytest.approx(0.06)


def test_tau_fronts_by_hand_from_the_selector_records(stage_dir):
    out, res, _ = stage_dir
    assert set(res["tau_fronts"]) == {"sr", "sn"}
    for kind, pts in res["tau_fronts"].items():
        assert [p["tau"] for p in pts] == pytest.approx([i / 10 for i in range(10)])
        assert all({"rob_acc", "rob_inacc", "rob_sel", "rob_acc_std", "rob_inacc_std", "rob_sel_std"} <= set(p)
                   for p in pts)
        # raising τ only removes selected points
        for k in ("rob_acc", "rob_inacc"):
            assert all(a[k] >= b[k] - 1e-12 for a, b in zip(pts, pts[1:]))
    for s in (0, 1):
        sr = read_records(out / f"records/tau-sr--trades-g6-s{s}.csv")
        f = read_records(out / f"records/trades-g6-s{s}.csv")
        assert np.array_equal(sr["index"], f["index"]) and np.array_equal(sr["pred"], f["pred"])
        # S_SR (eq. 16) by hand at τ = 0.5: the smallest max-softmax the attacks found in B_ε
        sel = np.minimum(sr["minconf_apgd@0.02"], sr["minconf_conf@0.02"]) >= 0.5
        rob = sr["robust@0.02"].astype(bool) & ~sr["flip_apgd@0.02"].astype(bool) & ~sr["flip_conf@0.02"].astype(bool)
        acc = sr["pred"] == sr["label"]
        got = tau_fronts.point_at("sr", sr, 0.02, 0.5)
        assert got["rob_acc"] == pytest.approx(np.mean(sel & rob & acc))
        assert got["rob_inacc"] == pytest.approx(np.mean(sel & rob & ~acc))
        # at τ = 0 everything is selected: F's partition at ε, never above the fine-tune's point
        # (the selector's attacks are added to the evaluation's)
        p0 = tau_fronts.point_at("sr", sr, 0.02, 0.0)
        part = R.partition_at(f, 0.02)
        assert p0["rob_acc"] <= part["rob_acc"] + 1e-12 and p0["rob_inacc"] <= part["rob_inacc"] + 1e-12
        # S_SN adds no attack: its robust@ε is the evaluation's (same attack, seed and starts),
        # so at τ = 0 its point is the fine-tune's point
        sn = read_records(out / f"records/tau-sn--trades-g6-s{s}.csv")
        assert np.array_equal(sn["robust@0.02"].astype(bool), f["robust@0.02"].astype(bool))
        q0 = tau_fronts.point_at("sn", sn, 0.02, 0.0)
        assert q0["rob_acc"] == pytest.approx(part["rob_acc"]) and q0["rob_inacc"] == pytest.approx(part["rob_inacc"])
    sr0 = [tau_fronts.point_at("sr", read_records(out / f"records/tau-sr--trades-g6-s{s}.csv"), 0.02, 0.5)
           for s in (0, 1)]
    row = res["tau_fronts"]["sr"][5]
    assert row["rob_acc"] == pytest.approx(np.mean([p["rob_acc"] for p in sr0]))
    assert row["rob_acc_std"] == pytest.approx(np.std([p["rob_acc"] for p in sr0]))
    blocks = pareto.report(out)
    tau_table = next(b for b in blocks if b["kind"] == "table" and b["caption"].startswith("τ-fronts"))
    assert {r[0] for r in tau_table["rows"]} == {"sr", "sn"}


def test_the_eri_reading_of_a_tau_point_is_the_partition(tmp_path):
    """The τ-front formula applied to S_ERI (selected = robust at ε) gives F's partition: the
    fine-tune points and the τ-fronts are on the same axes."""
    _write(tmp_path / "r.csv", 40, 7, n_correct=70)
    rec = read_records(tmp_path / "r.csv")
    got = tau_fronts.point_at("eri", rec, 0.02, None)
    assert got["rob_acc"] == pytest.approx(0.40) and got["rob_inacc"] == pytest.approx(0.07)
    assert got["rob_sel"] == pytest.approx(0.47)          # robust at 2ε as well (same column here)

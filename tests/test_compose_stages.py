"""digits-abstain and digits-compose stages end to end on tiny models, the report's numbers
recomputed from the records, and the ``abstain abstain`` command."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from abstain.checkpoint import save_checkpoint
from abstain.io import atomic_write_json
from abstain.records import read_records
from abstain.stages import StageContext
from abstain_fixtures import EPS, digits_models


def _save(model, d: Path) -> None:
    save_checkpoint(d, model, {"arch": "mlp", "num_classes": 10, "dataset": "digits", "data_root": None,
                               "model_kwargs": {"in_features": 64, "hidden": 64, "depth": 2}})


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    _, _, robust, core = digits_models()
    r = tmp_path_factory.mktemp("pipeline")
    _save(core, r / "digits-partition/work/std-s0")
    _save(robust, r / "digits-finetune/work/era-s0")
    _save(robust, r / "digits-finetune/work/trades-s0")
    return r


UPSTREAM = {"eps": EPS, "norm": "linf", "seeds": [0], "stage": "digits-finetune", "core_stage": "digits-partition"}


def _ctx(root: Path, name: str) -> StageContext:
    return StageContext(name=name, out=root / name, root=root, demo=True)


def test_stages_and_report_recompute_from_records(root: Path) -> None:
    from abstain.stages import abstain_models, compose
    from abstain.stages.study import DIGITS

    cfg = abstain_models.config("mini", True, DIGITS)
    cfg.update({"samples": 60, "steps": 5, "sn": {"epochs": 3, "hidden": 32, "samples": 300}, "tau_points": 11,
                "upstream": UPSTREAM})
    res = abstain_models.run(_ctx(root, "digits-abstain"), cfg)
    atomic_write_json(root / "digits-abstain/results.json", res)
    assert {"trades-eri", "era-eri", "trades-sr", "trades-sn"} <= set(res)   # dga is optional
    for v in ("trades-eri", "trades-sr", "trades-sn"):
        assert res[v]["rob_sel"] <= res[v]["coverage"] + 1e-12
    assert (root / "digits-abstain/fig3_abstain_pareto.png").stat().st_size > 10_000
    assert (root / "digits-abstain/fig6_sr_ablation.png").stat().st_size > 10_000
    blocks = abstain_models.report(root / "digits-abstain", DIGITS)
    table = next(b for b in blocks if b["kind"] == "table")
    row = {r[0]: r for r in table["rows"]}
    assert row["era-eri"][4] == round(100 * res["era-eri"]["rob_sel"], 2)
    assert row["trades-sr"][5] == round(100 * res["trades-sr"]["sel_rob_acc"], 2)

    ccfg = compose.config("mini", True, DIGITS)
    ccfg.update({"steps": 5, "abstain_steps": 5, "upstream": UPSTREAM})
    cres = compose.run(_ctx(root, "digits-compose"), ccfg)
    assert {"core", "robust", "compose-eri", "compose-sr", "compose-sn", "cascade"} <= set(cres)
    assert cres["meta"]["module_agreement"] == [1.0]  # the nn.Module reproduces the records
    rec = read_records(root / "digits-compose/records/compose-s0.csv")
    y = rec["label"]
    assert cres["compose-eri"]["nat_acc"] == pytest.approx(np.mean(rec["compose-eri.pred"] == y))
    # records agree with the abstain records: selected samples answered by F_robust
    era = read_records(root / "digits-abstain/records/abstain-era-eri-s0.csv")
    sel = era[f"robust@{EPS:g}"].astype(bool)
    assert np.array_equal(rec["compose-eri.pred"][sel], era["pred"][sel])
    assert np.array_equal(rec["compose-eri.pred"][~sel], rec["core.pred"][~sel])
    cblocks = compose.report(root / "digits-compose", DIGITS)
    ctab = next(b for b in cblocks if b["kind"] == "table")
    crow = {r[0]: r for r in ctab["rows"]}
    assert crow["cascade"][3] == round(100 * cres["cascade"]["rob_acc"], 2)
    assert crow["core"][2] == 0.0
    assert (root / "digits-compose/fig4_compositions.png").stat().st_size > 10_000


def test_abstain_command(root: Path, tmp_path: Path, capsys) -> None:
    from abstain.cli import main

    out = tmp_path / "out"
    rc = main(["abstain", "--robust", str(root / "digits-finetune/work/era-s0"),
               "--core", str(root / "digits-partition/work/std-s0"), "--selector", "eri",
               "--eps", str(EPS), "--samples", "40", "--steps", "5", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())["abstain-eri"]
    rec = read_records(out / f"records/abstain-eri-eps{EPS:g}.csv")
    comp = res[f"{EPS:g}"]["composition"]
    assert comp["nat_acc"] == pytest.approx(np.mean(rec[f"h.pred@{EPS:g}"] == rec["label"]))
    assert comp["rob_acc"] == pytest.approx(np.mean(rec[f"h.rob_acc@{EPS:g}"]))
    assert (out / "abstain_pareto-eri.png").is_file() and (out / "composition-eri.png").is_file()
    # a bad threshold is a user error (exit 2, one line)
    rc = main(["abstain", "--robust", str(root / "digits-finetune/work/era-s0"),
               "--core", str(root / "digits-partition/work/std-s0"), "--selector", "sr",
               "--eps", str(EPS), "--tau", "2", "--out", str(out)])
    assert rc == 2 and "--tau" in capsys.readouterr().err


def test_core_falls_back_to_the_smallest_trained_seed(root: Path) -> None:
    from abstain.errors import DataError
    from abstain.stages.compose import load_core

    model, seed = load_core(root, "digits-partition", "std", 2, "cpu")      # only std-s0 exists
    assert seed == 0 and not model.training
    model, seed = load_core(root, "digits-partition", "std", 0, "cpu")
    assert seed == 0
    with pytest.raises(DataError, match="missing core model"):
        load_core(root, "digits-partition", "nonexistent", 0, "cpu")


def test_two_selectors_on_one_run_live_side_by_side(root: Path, tmp_path: Path, capsys) -> None:
    """SR after SN (or ERI) on the same --out keeps both results: sections, records and plots
    are keyed by the selector (issue 25: a later selector replaced the earlier one's)."""
    from abstain.cli import main

    out = tmp_path / "out"
    base = ["abstain", "--robust", str(root / "digits-finetune/work/era-s0"),
            "--core", str(root / "digits-partition/work/std-s0"), "--eps", str(EPS), "--samples", "20",
            "--steps", "3", "--out", str(out)]
    assert main(base + ["--selector", "eri"]) == 0
    first = json.loads((out / "results.json").read_text())["abstain-eri"]
    assert main(base + ["--selector", "sr"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["abstain-eri"] == first and "abstain-sr" in res
    for tag in ("eri", "sr"):
        assert (out / f"records/abstain-{tag}-eps{EPS:g}.csv").is_file()
        assert (out / f"composition-{tag}.png").is_file()
    assert main(base + ["--selector", "eri"]) == 2           # the same selector again needs --overwrite
    assert main(base + ["--selector", "eri", "--overwrite"]) == 0

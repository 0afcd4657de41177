"""fig1 (issue 23, item 5): the authors' protocol reports the collapse rate over seeds and the
median beside the mean, keeps collapsed runs in the means, and has a TRADES row at lr 0.01."""
from __future__ import annotations

import numpy as np

from abstain.records import write_records
from abstain.stages import get


def test_collapse_rate_and_median_from_records(tmp_path):
    rec = tmp_path / "records"
    label = np.array([0, 0, 1, 1, 2, 2, 0, 1, 2, 0])
    robust = np.ones(10, dtype=bool)
    preds = {0: np.zeros(10, dtype=int),                        # constant: 40% right, 60% robust and wrong
             1: label.copy(), 2: np.where(np.arange(10) < 8, label, (label + 1) % 3)}   # 100%, 80% right
    for s, pred in preds.items():
        write_records(rec / f"train--trades-s{s}.csv", {"index": np.arange(10), "label": label, "pred": pred,
                                                        "robust@0.1": robust})
    table = next(b for b in get("fig1").report(tmp_path) if b["kind"] == "table")
    cols = table["columns"]
    row = next(r for r in table["rows"] if r[0] == "trades")
    assert row[cols.index("collapsed")] == "1/3"
    assert row[cols.index("median rob_inacc %")] == "20.0"      # rob_inacc 60, 0, 20 -> median 20
    assert row[cols.index("median rob_acc %")] == "80.0"
    assert row[cols.index("rob_inacc %")] == f"{np.mean([60, 0, 20]):.1f} ± {np.std([60, 0, 20]):.1f}"  # kept
    assert len(table["paper"][0]) == len(cols)


def test_lr_001_row_in_the_full_run_only():
    full, demo = get("fig1").config("mini", False), get("fig1").config("mini", True)
    assert full["variants"]["trades-lr0.01"]["train"]["lr"] == 0.01
    assert full["variants"]["trades-lr0.01"]["train"]["momentum"] == full["variants"]["trades"]["train"]["momentum"]
    assert full["protocols"]["trades-lr0.01"] == "authors" and "trades-lr0.01" not in demo["variants"]
    assert full["eval"]["text"][0] == "test"                    # the paper-text protocol's primary split


def test_seed_summary_reads_each_variant_on_its_primary_split(tmp_path):
    """results.json's ``per_seed`` (the claims table's Fig. 1 row): per-seed robust inaccuracy on
    the primary split, its median, seeds at 0.0% and collapsed seeds, from the records."""
    from abstain.stages.fig1 import seed_summary

    rec = tmp_path / "records"
    label = np.array([0, 0, 1, 1, 2, 2, 0, 1, 2, 0])
    robust = np.ones(10, dtype=bool)
    wrong = (label + 1) % 3
    preds = {0: np.zeros(10, dtype=int), 1: label.copy(), 2: np.where(np.arange(10) < 9, label, wrong)}
    for s, pred in preds.items():
        cols = {"index": np.arange(10), "label": label, "pred": pred, "robust@0.1": robust}
        write_records(rec / f"train--trades-s{s}.csv", cols)
        write_records(rec / f"trades-s{s}.csv", {**cols, "pred": label.copy()})   # the test split: all right
    write_records(rec / "text-era-s0.csv", {"index": np.arange(10), "label": label, "pred": label.copy(),
                                            "robust@0.1": robust})
    got = seed_summary(tmp_path, {"trades": "train", "text-era": "test"})
    assert got["trades"]["split"] == "train" and got["trades"]["seeds"] == [0, 1, 2]
    assert np.allclose(got["trades"]["rob_inacc"], [0.6, 0.0, 0.1]) and got["trades"]["rob_inacc_median"] == 0.1
    assert got["trades"]["n_zero_rob_inacc"] == 1 and got["trades"]["collapsed"] == [0]
    assert got["text-era"]["split"] == "test" and got["text-era"]["rob_inacc"] == [0.0]

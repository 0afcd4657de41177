"""The claims table's rows for Fig. 1, Tables 1 / 8, Fig. 3 and Sec. 7.3 (the paper's setup)
(issue 23, items 5 and 6): numbers and every verdict branch from results.json files written by
hand."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from abstain.report import claims


def _write(out: Path, stage: str, data: dict) -> None:
    (out / stage).mkdir(parents=True, exist_ok=True)
    (out / stage / "results.json").write_text(json.dumps(data))


def _seeds(rob_inacc: list[float], collapsed: tuple[int, ...] = (), split: str = "test") -> dict:
    return {"split": split, "seeds": list(range(len(rob_inacc))), "rob_inacc": rob_inacc,
            "rob_inacc_median": float(np.median(rob_inacc)), "n_zero_rob_inacc": sum(x == 0.0 for x in rob_inacc),
            "collapsed": list(collapsed)}


def _row(out: Path, claim: str) -> list[str]:
    return next(r for r in claims.blocks(out)[0]["rows"] if r[0] == claim)


def test_fig1_verdict_branches():
    assert claims.fig1_verdict([0.0, 0.0, 0.002], [0.016, 0.01, 0.02]) == "held"
    assert claims.fig1_verdict([0.0, 0.03], [0.016, 0.02]) == "held on 1 of 2 seeds"
    assert claims.fig1_verdict([0.02, 0.03], [0.016, 0.02]) == "did not hold"
    assert claims.fig1_verdict([0.0, 0.0], [0.0, 0.0]).startswith("not shown (TRADES has no")
    assert claims.fig1_verdict([0.0], [0.01, 0.02]).startswith("not shown")


def test_fig1_row_judges_the_paper_text_protocol(tmp_path: Path):
    _write(tmp_path, "fig1", {"per_seed": {
        "text-era": _seeds([0.0, 0.0, 0.0, 0.02, 0.0]), "text-trades": _seeds([0.01, 0.02, 0.012, 0.015, 0.0]),
        "era": _seeds([0.0] * 5, split="train"),
        "trades": _seeds([0.016, 0.66, 0.01, 0.02, 0.01], collapsed=(1,), split="train"),
        "trades-lr0.01": _seeds([0.01] * 5, split="train")}})
    numbers, verdict = _row(tmp_path, "Fig. 1")[3:]
    assert verdict == "held on 4 of 5 seeds"       # seed 3: ERA 2.0% above TRADES 1.5%
    assert "ERA 0.4% mean, 0.0% median over 5 seeds (0.0% on 4 of 5)" in numbers
    assert "TRADES 1.1% mean, 1.2% median" in numbers
    assert "authors' protocol, training set" in numbers and "TRADES collapsed on 1 of 5 seeds" in numbers
    assert "TRADES at lr 0.01 (authors' protocol): 1.0% mean, 1.0% median over 5 seeds, collapsed on 0 of 5" in numbers


def test_fig1_row_of_a_demo_reads_the_authors_protocol(tmp_path: Path):
    _write(tmp_path, "fig1", {"per_seed": {"era": _seeds([0.0], split="train"),
                                           "trades": _seeds([0.016], split="train")}})
    numbers, verdict = _row(tmp_path, "Fig. 1")[3:]
    assert verdict.startswith("held (the authors' protocol only")
    assert "ERA 0.0% mean, 0.0% median over 1 seed (0.0% on 1 of 1), TRADES 1.6%" in numbers and "collapsed on 0 of 1 seed (paper" in numbers
    _write(tmp_path, "fig1", {"era": {"rob_inacc": 0.0}})           # a results.json before per_seed
    assert _row(tmp_path, "Fig. 1")[4].startswith("not shown (fig1's results.json has no per-seed")


def _partition(eps: float, rob_inacc: dict[float, float], rule: str) -> dict:
    res: dict = {f"trades@{e:g}": {"rob_inacc": v, "nat_acc": 0.9} for e, v in rob_inacc.items()}
    res["trades"] = res[f"trades@{eps:g}"]
    res["meta"] = {"eps": eps, "chosen_eps": eps, "seeds": [0], "eval": "APGD-CE 40 steps aimed at the prediction",
                   "config": {"eps_rule": rule}}
    return res


def test_table1_verdict_branches():
    assert claims.table1_verdict(0.01) == "held" and claims.table1_verdict(0.08) == "held"
    assert claims.table1_verdict(0.0022) == "did not hold (0.22%: below 1%)"
    assert claims.table1_verdict(0.12) == "did not hold (12.00%: above 8%)"


def test_table1_row_reads_both_partitions(tmp_path: Path):
    _write(tmp_path, "digits-partition", _partition(0.1, {0.1: 0.0022, 0.2: 0.0044}, "gap"))
    _write(tmp_path, "mnist1d-partition", _partition(0.02, {0.01: 0.012, 0.02: 0.031, 0.04: 0.09}, "table1"))
    numbers, verdict = _row(tmp_path, "Table 1 / 8")[3:]
    assert "digits: TRADES at the study ε∞ = 0.1: 0.22% robust inaccuracy (APGD-CE 40 steps" in numbers
    assert "0.22–0.44% over ε∞ 0.1–0.2" in numbers and "MNIST-1D: TRADES at the study ε∞ = 0.02: 3.10%" in numbers
    assert verdict == ("digits: did not hold (0.22%: below 1%); "
                       "MNIST-1D: held by construction (its ε was chosen to put TRADES in 1–8%)")
    mnist = _partition(0.02, {0.02: 0.031}, "table1")
    mnist["meta"]["chosen_eps"] = 0.01                  # the rule chose another ε: in range, not by construction
    _write(tmp_path, "mnist1d-partition", mnist)
    _write(tmp_path, "digits-partition", _partition(0.1, {0.1: 0.05}, "gap"))     # one ε: no sweep range
    numbers, verdict = _row(tmp_path, "Table 1 / 8")[3:]
    assert verdict == "digits: held; MNIST-1D: held" and "over ε∞" not in numbers.split(";")[0]


def test_table1_row_not_run(tmp_path: Path):
    assert _row(tmp_path, "Table 1 / 8")[4] == "not run in this directory"


def _ci(mean: float, lo: float, hi: float) -> dict:
    return {"mean": mean, "ci95_low": lo, "ci95_high": hi}


def test_tradeoff_interval_verdict_branches():
    v = claims.tradeoff_interval_verdict
    assert v(_ci(0.01, 0.005, 0.02), _ci(0.01, 0.002, 0.02)) == "held"
    assert v(_ci(0.01, 0.005, 0.02), _ci(-0.02, -0.03, -0.01)) == "held as a trade-off"
    assert v(_ci(0.01, 0.005, 0.02), _ci(0.0, -0.01, 0.01)) == "held (robust: interval covers 0)"
    assert v(_ci(-0.01, -0.02, -0.005), _ci(0.01, 0.002, 0.02)) == "did not hold (natural lower); robust higher"
    assert v(_ci(0.0, 0.0, 0.0), _ci(0.0, 0.0, 0.0)) == "not shown (one seed, no interval)"
    assert v(_ci(0.0, float("nan"), float("nan")), _ci(0.0, 0.0, 0.1)) == "not shown (no interval)"
    assert (v(_ci(0.01, 0.005, 0.02), _ci(-0.02, -0.02, -0.02), ("R_rob^acc", "R_rob^sel"))
            == "held (R_rob^sel: one seed, no interval)")


def test_compose_2eps_row_judges_the_intervals(tmp_path: Path):
    """The paper's setup on MNIST-1D (mnist1d-compose-2eps, 3 pre-training seeds): natural
    −0.93 [−2.40, +0.05] covers 0, sound robust −11.77 [−12.20, −10.90] lies below."""
    _write(tmp_path, "mnist1d-compose-2eps", {
        "era_minus_trades_nat_acc@2eps": _ci(-0.0093, -0.0240, 0.0005),
        "era_minus_trades_rob_acc@2eps": _ci(-0.1177, -0.1220, -0.1090)})
    numbers, verdict = _row(tmp_path, "Sec. 7.3 (the paper's setup)")[3:]
    assert verdict == "not shown (natural interval covers 0); robust lower"
    assert "natural -0.93 [-2.40, +0.05], sound robust -11.77 [-12.20, -10.90]" in numbers
    _write(tmp_path, "mnist1d-compose-2eps", {
        "era_minus_trades_nat_acc@2eps": _ci(0.0058, 0.002, 0.009),
        "era_minus_trades_rob_acc@2eps": _ci(-0.0275, -0.04, -0.01)})
    assert _row(tmp_path, "Sec. 7.3 (the paper's setup)")[4] == "held as a trade-off"


def test_one_seed_shows_the_mean_without_an_interval(tmp_path: Path):
    nan = float("nan")
    one = {"mean": 0.0171, "ci95_low": nan, "ci95_high": nan, "n": 1}
    assert claims.interval_verdict(one) == "not shown (one seed, no interval)"
    assert claims._ci(one) == "+1.71 (no interval)"
    assert claims.tradeoff_interval_verdict(one, one) == "not shown (one seed, no interval)"
    assert claims.interval_verdict({**one, "n": 3}) == "not shown (no interval)"

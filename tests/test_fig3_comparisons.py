"""<study>-abstain's ``fig3`` comparisons (the claims table's Fig. 3 row): ERA_RI − TRADES_RI
paired over seeds and ERA_RI's distance above the S_SN τ-front, from hand-made records whose
values are computed by hand below."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from abstain.report import claims
from abstain.stages.abstain_models import fig3_comparisons, front_gap

EPS = 0.1
N = 10


def _eri(wrong: tuple[int, ...], n_robust: int, n_robust_2eps: int) -> dict[str, np.ndarray]:
    label = np.zeros(N, dtype=int)
    pred = label.copy()
    pred[list(wrong)] = 1
    idx = np.arange(N)
    return {"index": idx, "label": label, "pred": pred, f"robust@{EPS:g}": idx < n_robust,
            f"robust@{2 * EPS:g}": idx < n_robust_2eps}


def _sn(wrong: tuple[int, ...]) -> dict[str, np.ndarray]:
    rec = _eri(wrong, 8, 0)
    del rec[f"robust@{2 * EPS:g}"]
    score = 0.955 - 0.09 * np.arange(N)          # no score on the τ grid; sample 0 ranked first
    return {**rec, "score": score, f"score_lo@{EPS:g}": score, f"score_hi@{EPS:g}": score}


def test_front_gap():
    curve = [{"rob_sel": 0.9, "sel_rob_acc": 0.7}, {"rob_sel": 0.6, "sel_rob_acc": 0.8},
             {"rob_sel": 0.3, "sel_rob_acc": 0.95}]
    assert front_gap(curve, 0.5, 0.9) == pytest.approx(0.1)        # best reaching 0.5: 0.8
    assert front_gap(curve, 0.2, 0.9) == pytest.approx(-0.05)      # below the front
    assert front_gap(curve, 0.95, 0.9) is None                      # beyond the front's end


def test_fig3_comparisons_by_hand():
    data = {("trades", "eri"): {0: _eri((0,), 8, 6), 1: _eri((0, 1), 8, 6)},
            ("era", "eri"): {0: _eri((), 7, 5), 1: _eri((), 7, 4)},
            ("trades", "sn"): {0: _sn((0,)), 1: _sn((0, 1))}}
    got = fig3_comparisons(data, points=101)
    # TRADES_RI: R_rob^sel 0.6, R_rob^acc 5/6 (seed 0), 4/6 (seed 1); ERA_RI: 0.5 / 0.4, R_rob^acc 1
    assert got["era_minus_trades_ri_sel_rob_acc"]["per_seed"] == pytest.approx([1 / 6, 1 / 3])
    assert got["era_minus_trades_ri_rob_sel"]["per_seed"] == pytest.approx([-0.1, -0.2])
    assert got["era_minus_trades_ri_sel_rob_acc"]["mean"] == pytest.approx(0.25)
    # S_SN selects the top-k scores; sample 0 (wrong) first, samples 8, 9 not robust: the best
    # R_rob^acc at R_rob^sel >= ERA's is 7/8 (seed 0) and 6/8 (seed 1), at k = 8
    sn = got["era_ri_above_trades_sn_front"]
    assert sn["per_seed"] == pytest.approx([0.125, 0.25]) and sn["beyond_front"] == 0
    assert sn["ci95_low"] < 0 < sn["ci95_high"]                     # two seeds: t(1) is wide
    assert "era_ri_above_trades_sr_front" not in got                # no S_SR records
    assert fig3_comparisons({("trades", "eri"): data[("trades", "eri")]}) == {}


def _write(out: Path, stage: str, fig3: dict) -> None:
    (out / stage).mkdir(parents=True, exist_ok=True)
    (out / stage / "results.json").write_text(json.dumps({"fig3": fig3}))


def _d(mean: float, lo: float, hi: float, **kw) -> dict:
    return {"mean": mean, "ci95_low": lo, "ci95_high": hi, "n": 3, **kw}


def test_fig3_row_verdicts(tmp_path: Path):
    _write(tmp_path, "mnist1d-abstain", {
        "seeds": [0, 1, 2],
        "era_minus_trades_ri_sel_rob_acc": _d(0.0118, 0.005, 0.02), "era_minus_trades_ri_rob_sel": _d(-0.0378, -0.05, -0.02),
        "era_ri_above_trades_sr_front": _d(0.01, 0.004, 0.02, beyond_front=1),
        "era_ri_above_trades_sn_front": _d(-0.01, -0.02, -0.004)})
    _write(tmp_path, "digits-abstain", {
        "seeds": [0, 1, 2],
        "era_minus_trades_ri_sel_rob_acc": _d(0.0, -0.01, 0.01), "era_minus_trades_ri_rob_sel": _d(0.01, 0.005, 0.02)})
    row = next(r for r in claims.blocks(tmp_path)[0]["rows"] if r[0] == "Fig. 3")
    numbers, verdict = row[3:]
    assert verdict == ("digits: vs TRADES_RI: not shown (R_rob^acc interval covers 0); R_rob^sel higher — "
                       "MNIST-1D: vs TRADES_RI: held as a trade-off; vs S_SR: held; vs S_SN: did not hold")
    assert "MNIST-1D: ERA_RI − TRADES_RI: R_rob^acc +1.18 [+0.50, +2.00], R_rob^sel -3.78 [-5.00, -2.00] points (3 seeds)" in numbers
    assert "above the S_SR τ-front by +1.00 [+0.40, +2.00] points R_rob^acc (1 seed beyond the front's robust selection)" in numbers
    _write(tmp_path, "digits-abstain", {})                               # results.json before fig3
    row = next(r for r in claims.blocks(tmp_path)[0]["rows"] if r[0] == "Fig. 3")
    assert row[4].startswith("digits: not shown (results.json has no fig3 comparisons")

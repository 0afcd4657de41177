"""The report's claims table: verdicts worded as the paper words each claim, from results.json
files written by hand (Sec. 7.3's trade-off is 'held as a trade-off', not 'did not hold')."""
from __future__ import annotations

import json
from pathlib import Path

from abstain.report import claims


def _write(out: Path, stage: str, data: dict) -> None:
    (out / stage).mkdir(parents=True)
    (out / stage / "results.json").write_text(json.dumps(data))


def test_verdict_rules():
    assert claims.interval_verdict({"ci95_low": -0.03, "ci95_high": -0.01}) == "held"
    assert claims.interval_verdict({"ci95_low": 0.01, "ci95_high": 0.02}) == "did not hold"
    assert claims.interval_verdict({"ci95_low": -0.01, "ci95_high": 0.02}).startswith("not shown")
    assert claims.interval_verdict({"ci95_low": float("nan"), "ci95_high": 0.0}).startswith("not shown")
    assert claims.interval_verdict({"ci95_low": -0.02, "ci95_high": -0.02}).startswith("not shown")   # one seed
    # several seeds with the same difference on each: no spread, but not "one seed"
    assert claims.interval_verdict({"ci95_low": 0.0, "ci95_high": 0.0, "n": 3}) == "not shown (no difference on any of 3 seeds)"
    assert claims.interval_verdict({"ci95_low": -0.02, "ci95_high": -0.02, "n": 3}) == "held"
    assert claims._paired_verdict({"ci95_low": -0.03, "ci95_high": -0.01, "mcnemar_p": 0.01}) == "held"
    assert claims._paired_verdict({"ci95_low": -0.03, "ci95_high": -0.01, "mcnemar_p": 1.0}).startswith("not shown")
    # the paper's composition claim (+0.58 natural, -2.75 robust) and MNIST-1D's (+1.48, -1.78)
    assert claims.tradeoff_verdict(0.0058, -0.0275) == "held as a trade-off"
    assert claims.tradeoff_verdict(0.0148, -0.0178) == "held as a trade-off"
    assert claims.tradeoff_verdict(0.01, 0.01) == "held"
    assert claims.tradeoff_verdict(-0.01, 0.02) == "did not hold"


def test_claims_table_reads_the_stage_results(tmp_path: Path):
    _write(tmp_path, "mnist1d-compose", {"compose-eri": {"nat_acc": 0.9148, "rob_acc": 0.40},
                                         "compose-eri-trades": {"nat_acc": 0.90, "rob_acc": 0.4178}})
    _write(tmp_path, "mnist1d-pareto", {"matched": {
        "era_minus_trades_rob_inacc@0.5": {"mean": -0.02, "ci95_low": -0.03, "ci95_high": -0.01, "holm_reject": True},
        "dga_minus_trades_rob_inacc@0.5": {"mean": 0.0, "ci95_low": -0.01, "ci95_high": 0.01},
        "era_minus_sr_rob_inacc@0.45": {"mean": -0.01, "ci95_low": -0.015, "ci95_high": -0.005},
        "era_minus_sn_rob_inacc@0.45": {"mean": 0.01, "ci95_low": 0.005, "ci95_high": 0.015}}})
    rows = {r[0]: r for r in claims.blocks(tmp_path)[0]["rows"]}
    assert len(rows) == len(claims.CLAIMS)
    comp = rows["Tables 4 / 6, Fig. 4, Sec. 7.3"]
    assert comp[4] == "held as a trade-off" and "+1.48" in comp[3] and "-1.78" in comp[3]
    front = rows["Fig. 2 / Table 5"]
    assert front[4] == "held" and "survive Holm: 1 of 1" in front[3]
    tau = rows["Fig. 3 on Fig. 2's axes"]
    assert tau[4] == "mixed across selectors / levels" and "era minus sr @0.45: -1.00 [-1.50, -0.50]" in tau[3]
    assert "survive Holm: 0 of 2" in tau[3]
    assert rows["Tables 2 / 3"][4] == "not run in this directory"
    assert rows["Sec. 7.3 (the paper's setup)"][4] == "not run in this directory"


def test_claims_of_a_demo_run(tmp_path: Path):
    _write(tmp_path, "mnist1d-pareto", {"matched": {}})
    _write(tmp_path, "mnist1d-compose-2eps", {
        "era_minus_trades_nat_acc@2eps": {"mean": -0.0065, "ci95_low": -0.0065, "ci95_high": -0.0065},
        "era_minus_trades_rob_acc@2eps": {"mean": -0.1295, "ci95_low": -0.1295, "ci95_high": -0.1295}})
    rows = {r[0]: r for r in claims.blocks(tmp_path)[0]["rows"]}
    assert rows["Fig. 2 / Table 5"][4].startswith("not shown (no robust-accuracy level")
    assert rows["Fig. 3 on Fig. 2's axes"][4].startswith("not shown (no matched level")
    # one pre-training seed: the bootstrap interval is a point, so the interval rule shows nothing
    assert rows["Sec. 7.3 (the paper's setup)"][4] == "not shown (one seed, no interval)"
    assert "-0.65" in rows["Sec. 7.3 (the paper's setup)"][3]
    assert rows["Tables 4, 5, 9; MTSD (paper scale)"][4].startswith("not testable here")


def test_a_claim_held_only_before_holm_says_so() -> None:
    assert claims._holm_qualified("held", []) == "held by the 95% intervals, but no comparison survives Holm's correction"
    assert claims._holm_qualified("held", ["era_minus_sr_rob_inacc@0.49"]) == "held"
    assert claims._holm_qualified("not shown (interval covers 0)", []) == "not shown (interval covers 0)"


def test_the_abstract_row_reads_the_budget(tmp_path) -> None:
    import json

    stage = tmp_path / "mnist1d-pareto"
    stage.mkdir()
    budget = {"era@1.0": {"mean": 0.305, "ci95_low": 0.30, "ci95_high": 0.31},
              "trades@1.0": {"mean": 0.27, "ci95_low": 0.25, "ci95_high": 0.29}}
    (stage / "results.json").write_text(json.dumps({"core": {"nat_acc": 0.97, "rob_acc": 0.24}, "budget": budget}))
    numbers, verdict = claims._abstract(tmp_path)
    assert verdict == "held" and "30.50%" in numbers and "core 24.00%" in numbers
    budget["era@1.0"]["ci95_low"] = 0.23                 # the interval reaches the core's 24%
    (stage / "results.json").write_text(json.dumps({"core": {"nat_acc": 0.97, "rob_acc": 0.24}, "budget": budget}))
    assert claims._abstract(tmp_path)[1].startswith("not shown")
    assert claims._abstract(tmp_path / "nowhere") is None

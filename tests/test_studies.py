"""The miniature studies (digits, MNIST-1D): their stages read the study's configs, and the
paired ERA − TRADES difference with its 95% interval."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from abstain.metrics import paired_difference
from abstain.stages import get as get_stage
from abstain.stages.finetune import paired_vs_trades
from abstain.stages.study import DIGITS, MNIST1D


def test_paired_difference_is_the_t_interval_of_the_differences():
    a, b = [0.02, 0.031, 0.015, 0.04, 0.022], [0.025, 0.03, 0.02, 0.05, 0.03]
    d = np.subtract(a, b)
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    out = paired_difference(a, b)
    assert out["mean"] == pytest.approx(d.mean()) and out["n"] == 5
    assert out["ci95_low"] == pytest.approx(lo) and out["ci95_high"] == pytest.approx(hi)
    assert np.isnan(paired_difference([0.1], [0.2])["ci95_low"])


def test_paired_vs_trades_pairs_seed_by_seed():
    per = {"trades": [{"rob_inacc": 0.03, "rob_acc": 0.5}, {"rob_inacc": 0.02, "rob_acc": 0.6}],
           "era": [{"rob_inacc": 0.01, "rob_acc": 0.52}, {"rob_inacc": 0.02, "rob_acc": 0.58}],
           "era-authors": [{"rob_inacc": 0.0, "rob_acc": 0.5}]}          # a seed missing: no pair
    out = paired_vs_trades(per, [0, 1])
    assert set(out) == {"era_minus_trades_rob_inacc", "era_minus_trades_rob_acc"}
    assert out["era_minus_trades_rob_inacc"]["mean"] == pytest.approx(-0.01)


@pytest.mark.parametrize("study", [DIGITS, MNIST1D], ids=lambda s: s.prefix)
def test_study_stages_read_the_study_configs(study):
    ft = get_stage(study.name("finetune")).config("mini", False)
    assert ft["seeds"] == list(study.seeds) and set(ft["variants"]) == set(study.finetunes)
    part = get_stage(study.name("partition")).config("mini", False)
    assert part["study_eps"] == ft["eps"]                       # one threat model per study
    assert ft["pretrain"]["loss"]["eps"] == pytest.approx(2 * ft["eps"])
    ab = get_stage(study.name("abstain")).config("mini", False)
    assert ab["upstream"]["seeds"] == ft["seeds"] and ab["upstream"]["eps"] == ft["eps"]
    assert ab["dataset"] == part["experiments"]["std"]["data"]["name"]
    co = get_stage(study.name("compose")).config("mini", True)
    assert co["abstain_stage"] == study.name("abstain") and co["attack"] == "apgd-ce"


def test_eps_rules_choose_from_the_trades_partitions():
    from abstain.stages.partition import choose_eps, rule_ok

    def m(nat, rob, inacc):
        return {"nat_acc": nat, "rob_acc": rob, "rob_inacc": inacc}

    # the MNIST-1D sweep in configs/mnist1d-trades-pretrain.toml (TRADES from scratch, seed 0)
    sweep = {0.01: m(0.943, 0.773, 0.005), 0.02: m(0.877, 0.532, 0.0155),
             0.03: m(0.813, 0.409, 0.021), 0.05: m(0.764, 0.238, 0.0035)}
    assert [e for e in sweep if rule_ok(sweep, e, "table1")] == [0.02, 0.03]
    assert choose_eps(sweep, "table1") == 0.03                   # the largest robust inaccuracy in range
    assert choose_eps({0.01: sweep[0.01], 0.05: sweep[0.05]}, "table1") is None
    # digits' gap rule: 0.1 keeps a 5-point gap and its double 0.2 keeps >= 50% robust accuracy
    digits = {0.05: m(0.993, 0.947, 0.0), 0.1: m(0.984, 0.887, 0.0), 0.2: m(0.962, 0.551, 0.0)}
    assert choose_eps(digits, "gap") == 0.1 and not rule_ok(digits, 0.2, "gap")   # no 0.4 to check
    assert choose_eps(digits, "table1") is None                  # no robust inaccuracy on digits
    assert DIGITS.eps_rule == "gap" and MNIST1D.eps_rule == "table1"


def test_mnist1d_study_compares_both_era_variants_with_trades():
    ft = get_stage("mnist1d-finetune").config("mini", False)
    assert len(ft["seeds"]) >= 5
    assert ft["variants"]["era"]["loss"]["variant"] == "paper"
    assert ft["variants"]["era-authors"]["loss"]["variant"] == "authors"
    assert {c["train"]["weight_decay"] for c in ft["variants"].values()} == {1e-4}


def test_selection_network_does_not_depend_on_the_global_rng():
    """S_SN's initial weights come from its seed, not from what ran before in the process
    (the stages share one process: a resumed or --only run must give the same records)."""
    import torch

    from abstain.selectors.evaluate import build_selector

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(120, 1, 8, 8, generator=g), torch.randint(0, 3, (120,), generator=g)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()
    nets = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        sel = build_selector("sn", model, eps=0.05, steps=2, seed=3, train=(x, y),
                             sn={"epochs": 1, "hidden": 8, "samples": 60})
        nets.append(sel.net.state_dict())
    assert all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])


def test_fig1_records_a_diverged_training_as_an_outcome(tmp_path, monkeypatch):
    """A fig1 variant whose loss becomes NaN (the misread β = 6 at lr 0.1 does) is reported as
    diverged; the stage and its other variants go on."""
    import torch

    from abstain.stages import StageContext, get as get_stage

    cfgs = tmp_path / "configs"
    cfgs.mkdir()
    base = ('[data]\nname = "gauss3"\nval_fraction = 0.0\n[model]\narch = "mlp"\nkwargs = {{ depth = 1, hidden = 8 }}\n'
            '[train]\nloss = "{loss}"\nschedule = "constant"\nepochs = 1\nbatch_size = 100\nlr = {lr}\nselect = "last"\n')
    loss = '[loss]\neps = 0.1\nnorm = "linf"\nsteps = 2\ngamma = 6.0\n'
    (cfgs / "gauss3-authors-std.toml").write_text(base.format(loss="standard", lr=0.1))
    (cfgs / "gauss3-authors-trades.toml").write_text(base.format(loss="trades", lr=1e30) + loss)
    (cfgs / "gauss3-authors-era.toml").write_text(base.format(loss="era", lr=0.1) + loss + 'beta = 0.2\n')
    monkeypatch.setenv("ABSTAIN_CONFIGS", str(cfgs))
    st = get_stage("fig1")
    cfg = st.config("mini", True)
    cfg.update({"grid": 20, "eval": {k: (split, 3) for k, (split, _) in cfg["eval"].items()}})
    ctx = StageContext(name="fig1", out=tmp_path / "fig1", root=tmp_path, demo=True, device=torch.device("cpu"),
                       quiet=True)
    res = st.run(ctx, cfg)
    assert [d["variant"] for d in res["meta"]["diverged"]] == ["trades"]
    assert "std" in res and "era" in res and "trades" not in res
    text = " ".join(b.get("text", "") for b in st.report(tmp_path / "fig1"))
    assert "Diverged" in text and "trades-s0" in text


def test_fig1_report_names_runs_that_collapsed_to_a_constant_classifier(tmp_path):
    """Under the authors' optimizer TRADES can end as a constant classifier on some seeds; the
    report names such runs (they stay in the tables), and only those."""
    from abstain.records import write_records
    from abstain.stages import get as get_stage
    from abstain.stages.fig1 import collapsed_runs

    rec = tmp_path / "records"
    label = np.array([0, 0, 1, 1, 2, 1])
    for variant, seed, pred in (("trades", 0, [1] * 6), ("trades", 1, [0, 0, 1, 1, 2, 1]),
                                ("era", 0, [0, 0, 1, 1, 1, 1])):
        cols = {"index": np.arange(6), "label": label, "pred": np.array(pred), "robust@0.1": np.ones(6, bool)}
        write_records(rec / f"{variant}-s{seed}.csv", cols)
        write_records(rec / f"train--{variant}-s{seed}.csv", cols)   # prefixed sets are not read twice
    assert collapsed_runs(tmp_path) == ["trades seed 0"]
    text = " ".join(b.get("text", "") for b in get_stage("fig1").report(tmp_path))
    assert "constant classifier" in text and "trades seed 0" in text and "era seed 0" not in text

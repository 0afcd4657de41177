"""Paper-scale stages: configs -> stage config/hash, report numbers from records, paper lookup."""
from __future__ import annotations

import json

import numpy as np
import pytest

from abstain.records import write_records
from abstain.stages import get as get_stage, of_scale
from abstain.stages import paper

ERA_TOML = """[data]
name = "cifar10"
augment = "none"
[model]
arch = "resnet50"
init = "checkpoints/Zhang2019Theoretically_resnet50.pt"
[train]
loss = "era"
schedule = "finetune"
[loss]
eps = 0.00392156862745098
"""


def test_paper_stages_are_registered_and_read_their_configs(tmp_path, monkeypatch):
    assert {s.name for s in paper.STAGES} <= {s.name for s in of_scale("paper")}
    for name, ps in paper.PAPER_STAGES.items():
        st = get_stage(name)
        assert st.name == name and st.scale == "paper" and st.run == ps.run
    monkeypatch.setenv("ABSTAIN_CONFIGS", str(tmp_path))
    (tmp_path / "cifar10-table5-era-1.toml").write_text(ERA_TOML)
    st = paper.PAPER_STAGES["cifar10-table5"]
    c1 = st.config("paper", False)
    assert list(c1["variants"]) == ["cifar10-table5-era-1"]
    assert c1["variants"]["cifar10-table5-era-1"]["toml"]["train"]["loss"] == "era"
    assert st.config("paper", True)["n_test"] == st.demo_n_test and c1["n_test"] is None
    from abstain.pipeline import stage_hash

    h1 = stage_hash(st.NAME, c1, {})
    (tmp_path / "cifar10-table5-era-1.toml").write_text(ERA_TOML.replace('"none"', '"autoaugment"'))
    assert stage_hash(st.NAME, st.config("paper", False), {}) != h1     # editing a config invalidates


def test_paper_report_recomputes_from_records_with_the_papers_numbers(tmp_path):
    st = paper.PAPER_STAGES["cifar10-table5"]
    sdir = tmp_path / "cifar10-table5"
    eps = 1 / 255
    rng = np.random.default_rng(0)
    oracle = []
    for seed in (0, 1):
        n = 200
        y = rng.integers(0, 10, n)
        pred = np.where(rng.random(n) < 0.85, y, (y + 1) % 10)
        rob = rng.random(n) < 0.8
        rob2 = rob & (rng.random(n) < 0.9)
        write_records(sdir / "records" / f"era-1-s{seed}.csv",
                      {"index": np.arange(n), "label": y, "pred": pred, f"robust@{eps:g}": rob,
                       f"robust@{2 * eps:g}": rob2})
        acc = pred == y
        oracle.append({"nat_acc": acc.mean(), "rob_acc": (acc & rob).mean(),
                       "rob_inacc": (~acc & rob).mean(), "rob_sel": rob2.mean(),
                       "sel_rob_acc": (rob2 & acc & rob).sum() / rob2.sum()})
    toml = {"train": {"loss": "era"}, "data": {"augment": "none"}, "loss": {"eps": eps}}
    (sdir / "results.json").write_text(json.dumps(
        {"meta": {"config": {"variants": {"era-1": {"toml": toml}}}}}))
    blocks = st.report(sdir)
    (table,) = [b for b in blocks if b["kind"] == "table"]
    (row,) = table["rows"]
    cell = dict(zip(table["columns"], row))
    assert cell["variant"] == "era-1" and cell["seeds"] == 2
    assert cell["ε"] == "1/255"
    for k in ("nat_acc", "rob_acc", "rob_inacc", "rob_sel", "sel_rob_acc"):
        assert cell[k] == pytest.approx(np.mean([o[k] for o in oracle]), abs=1e-12), k
    ref = dict(zip(table["columns"], table["paper"][0]))
    assert ref["rob_sel"] == pytest.approx(0.8631) and ref["sel_rob_acc"] == pytest.approx(0.9663)
    assert ref["nat_acc"] is None


def test_partition_paper_lookup_by_checkpoint_and_eps():
    look = paper._partition_paper(paper._TABLE8)
    got = look({"model": {"init": "checkpoints/Carmon2019Unlabeled.pt"}, "train": {"loss": "trades"},
                "loss": {"eps": 2 / 255}})
    assert got == pytest.approx({"nonrob_inacc": 0.0738, "rob_inacc": 0.024, "nonrob_acc": 0.032,
                                 "rob_acc": 0.8702, "nat_acc": 0.9022})
    assert look({"model": {"init": "x.pt"}, "loss": {"eps": 2 / 255}}) is None


@pytest.fixture
def one_thread():
    """One torch thread: on a shared, oversubscribed 2-core machine two intra-op threads make
    this tiny training several times slower (measured 16 s vs 3 s of CPU)."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def test_paper_stage_runs_a_tiny_config_end_to_end_and_resumes(tmp_path, monkeypatch, one_thread):
    """The paper-stage machinery (config -> fine-tune -> APGD records -> report) on digits."""
    import torch

    from abstain.stages import StageContext
    from abstain.utils import progress

    monkeypatch.setenv("ABSTAIN_CONFIGS", str(tmp_path / "configs"))
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny-std.toml").write_text(
        '[data]\nname = "digits"\nval_fraction = 0.0\n[model]\narch = "cnn"\n'
        '[train]\nloss = "standard"\nepochs = 3\nbatch_size = 64\nlr = 0.1\n[loss]\neps = 0.05\n')
    st = paper.PaperStage("tiny", "tiny", ("tiny*.toml",), steps=3, demo_n_test=60)
    cfg = st.config("mini", True)
    assert st.missing_data(cfg, tmp_path) == []
    ctx = StageContext(name="tiny", out=tmp_path / "tiny", root=tmp_path, demo=True,
                       device=torch.device("cpu"), quiet=True,
                       progress=lambda *a, **k: progress(*a, **{**k, "disable": True}))
    res = st.run(ctx, cfg)
    rec = tmp_path / "tiny" / "records" / "tiny-std-s0.csv"
    first = rec.read_text()
    assert first.splitlines()[0] == "index,label,pred,robust@0.05,robust@0.1"
    assert len(first.splitlines()) == 61
    assert res["tiny-std"]["nat_acc"] > 0.5                  # learnt something (chance: 0.1)
    log = tmp_path / "tiny" / "work" / "tiny-std-s0" / "log.jsonl"
    assert len(log.read_text().splitlines()) == 3
    st.run(ctx, cfg)                                       # resumes the finished training run
    assert len(log.read_text().splitlines()) == 3 and rec.read_text() == first
    (table,) = [b for b in st.report(tmp_path / "tiny") if b["kind"] == "table"]
    assert table["rows"][0][0] == "tiny-std" and table["rows"][0][3] == pytest.approx(res["tiny-std"]["nat_acc"])


def test_chained_configs_core_model_and_compositions(tmp_path, monkeypatch):
    """A config initialised from another's run trains after it; a core model (standard, no ε)
    is evaluated at every ε and composed with each robust model (eq. 15) from the records."""
    from abstain.records import read_records

    monkeypatch.setenv("ABSTAIN_CONFIGS", str(tmp_path / "configs"))
    (tmp_path / "configs").mkdir()
    base = '[data]\nname = "digits"\n[model]\narch = "cnn"\n'
    (tmp_path / "configs" / "t-era-eps1.toml").write_text(
        '[experiment]\ninit_from = "t-trades-eps1"\n' + base
        + 'init = "../runs/t-trades-1"\n[train]\nloss = "era"\n[loss]\neps = 0.00392156862745098\n')
    (tmp_path / "configs" / "t-trades-eps1.toml").write_text(
        base + '[train]\nloss = "trades"\n[loss]\neps = 0.00392156862745098\n')
    (tmp_path / "configs" / "t-core.toml").write_text('[experiment]\nrole = "core"\n' + base
                                                      + '[train]\nloss = "standard"\n')
    st = paper.PaperStage("t", "t", ("t-*.toml",), paper_compose=lambda t: {"nat_acc": 0.941})
    cfg = st.config("paper", False)
    assert list(cfg["variants"]) == ["t-core", "t-trades-eps1", "t-era-eps1"]
    assert cfg["variants"]["t-era-eps1"]["after"] == "t-trades-eps1"
    assert cfg["eps"] == [1 / 255]
    assert [p for p, _ in st.required(cfg, tmp_path)] == []          # digits, and init is a sibling run

    sdir = tmp_path / "t"
    rng = np.random.default_rng(1)
    n, e = 120, 1 / 255
    y = rng.integers(0, 10, n)
    cols = {}
    for v in cfg["variants"]:
        pred = np.where(rng.random(n) < 0.8, y, (y + 3) % 10)
        rob = rng.random(n) < 0.7
        c = {"index": np.arange(n), "label": y, "pred": pred, f"robust@{e:g}": rob,
             f"robust@{2 * e:g}": rob & (rng.random(n) < 0.8)}
        if v == "t-core":                       # stored in another order: matched on index
            perm = rng.permutation(n)
            c = {k: np.asarray(a)[perm] for k, a in c.items()}
        write_records(sdir / "records" / f"{v}-s0.csv", c)
        cols[v] = read_records(sdir / "records" / f"{v}-s0.csv")
    (sdir / "results.json").write_text(json.dumps(
        {"meta": {"config": {"variants": {k: {"toml": v["toml"]} for k, v in cfg["variants"].items()}}}}))
    tables = [b for b in st.report(sdir) if b["kind"] == "table"]
    part, comp = tables
    assert [r[0] for r in part["rows"]] == ["t-core", "t-era-eps1", "t-trades-eps1"]
    assert [r[0] for r in comp["rows"]] == ["t-era-eps1", "t-trades-eps1"]
    core = cols["t-core"]
    order = np.argsort(core["index"])
    cp, cr = core["pred"][order], core[f"robust@{e:g}"][order].astype(bool)
    for row in comp["rows"]:
        r = cols[row[0]]
        acc, rob = r["pred"] == y, r[f"robust@{e:g}"].astype(bool)
        rsel = r[f"robust@{2 * e:g}"].astype(bool) & rob
        h = np.where(rob, r["pred"], cp)
        ok = rob & acc & (rsel | (cr & (cp == y)))            # sound: see metrics.cascade_outcome
        cell = dict(zip(comp["columns"], row))
        assert cell["core"] == "t-core" and cell["ε"] == "1/255"
        assert cell["core nat_acc"] == pytest.approx(np.mean(cp == y))
        assert cell["core rob_acc"] == pytest.approx(np.mean((cp == y) & cr))
        assert cell["nat_acc"] == pytest.approx(np.mean(h == y))
        assert cell["rob_acc"] == pytest.approx(np.mean(ok))
        assert cell["coverage"] == pytest.approx(np.mean(rob))
        assert cell["Δ rob_acc"] == pytest.approx(np.mean(ok) - np.mean((cp == y) & cr))
    assert comp["paper"][0][comp["columns"].index("nat_acc")] == 0.941


def test_cifar100_table9_stage_names_its_data_and_checkpoint(tmp_path):
    """Table 9: the Rebuffi et al. model fine-tuned with TRADES at 1, 2, 4/255, evaluated as
    published at 8/255, and a standard core; missing CIFAR-100 data and checkpoint are named."""
    from abstain.stages import get as get_stage

    st = get_stage("cifar100-table9")
    cfg = st.config("paper", False)
    v = cfg["variants"]
    assert round(255 * cfg["eps"][-1]) == 8 and [round(255 * e) for e in cfg["eps"]] == [1, 2, 4, 8]
    assert v["cifar100-table9-rebuffi-eps8"]["toml"]["train"]["epochs"] == 0
    assert v["cifar100-table9-std-wrn28"]["toml"]["experiment"]["role"] == "core"
    lines = st.missing_data(cfg, tmp_path)
    assert any(l.startswith(f"{tmp_path / 'cifar-100-python'}: ") for l in lines)
    assert any("Rebuffi2021Fixing_28_10_cutmix_ddpm.pt" in l and "dataset='cifar100'" in l for l in lines)
    assert st.trains_large_models
    assert not get_stage("paper-records").trains_large_models

"""``abstain certify`` and the certify records: columns, partition with abstentions in the
denominator, sharding over ranks gives the records of one process, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from abstain import distributed
from abstain.checkpoint import save_checkpoint
from abstain.cli import main
from abstain.records import read_records
from abstain.smoothing.records import certify_metrics, certify_records, sequential_comparison


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from abstain import models

    torch.manual_seed(0)
    model = models.create("cnn", 10, width=4)
    d = tmp_path_factory.mktemp("run")
    save_checkpoint(d, model, {"arch": "cnn", "num_classes": 10, "dataset": "digits", "data_root": None,
                               "model_kwargs": {"width": 4}})
    return d


def test_certify_command_writes_records_and_results(run_dir, capsys):
    rc = main(["certify", "--run", str(run_dir), "--sigma", "0.5", "--eps", "0.1", "0.2", "--n0", "10",
               "--n", "200", "--alpha", "0.01", "--samples", "30", "--noise-batch-size", "256", "--device", "cpu"])
    assert rc == 0
    rec = read_records(run_dir / "records" / "certify.csv")
    for col in ("index", "label", "pred", "radius", "correct", "n0", "n", "count", "alpha", "p_lower",
                "bound", "samples", "seconds", "certified@0.1", "certified@0.2", "certified@0.4"):
        assert col in rec, col
    assert len(rec["index"]) == 30 and np.all(np.diff(rec["index"]) > 0)
    assert np.bincount(rec["label"], minlength=10).tolist() == [3] * 10          # class-balanced
    assert (rec["samples"] == 210).all() and (rec["bound"] == "clopper-pearson").all()
    abst = rec["pred"] == -1
    assert (rec["radius"][abst] == 0).all() and not rec["certified@0.1"][abst].any()
    res = json.loads((run_dir / "results.json").read_text())["certify"]
    m = res["metrics"]["0.1"]
    # every input stays in the denominator (abstentions and radius 0 included)
    assert m["rob_acc"] + m["rob_inacc"] + m["nonrob_acc"] + m["nonrob_inacc"] == pytest.approx(1.0)
    assert m["rob_acc"] == pytest.approx(np.mean(rec["certified@0.1"] & (rec["pred"] == rec["label"])))
    assert m["rob_sel"] == pytest.approx(np.mean(rec["certified@0.2"]))
    assert res["samples"] == 30 and res["alpha"] == 0.01 and not res["sequential"]
    assert "certified accuracy" in capsys.readouterr().out


def test_existing_records_are_not_overwritten(run_dir, capsys):
    argv = ["certify", "--run", str(run_dir), "--sigma", "0.5", "--eps", "0.1", "--n0", "10",
            "--n", "100", "--alpha", "0.01", "--samples", "10", "--device", "cpu"]
    main(argv)  # writes the records unless an earlier test already did
    before = (run_dir / "records" / "certify.csv").read_bytes()
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (run_dir / "records" / "certify.csv").read_bytes() == before


def test_sequential_command(run_dir):
    rc = main(["certify", "--run", str(run_dir), "--sigma", "0.5", "--eps", "0.1", "--n0", "10",
               "--n", "2000", "--alpha", "0.01", "--samples", "20", "--sequential", "--device", "cpu",
               "--overwrite"])
    assert rc == 0
    rec = read_records(run_dir / "records" / "certify.csv")
    assert str(rec["bound"][0]).startswith("cp-union-")
    assert (rec["n"] <= 2000).all() and (rec["samples"] == rec["n"] + 10).all()
    assert np.array_equal(rec["certified@0.1"].astype(bool), (rec["pred"] >= 0) & (rec["radius"] >= 0.1))


@pytest.mark.parametrize("args, msg", [
    (["--sigma", "0"], "sigma"), (["--alpha", "1.5"], "alpha"), (["--n0", "0"], "n0"),
    (["--n", "0"], "n"), (["--eps", "-1"], "eps"),
])
def test_certify_command_bad_input(run_dir, capsys, args, msg):
    base = {"--sigma": "0.5", "--alpha": "0.01", "--n0": "10", "--n": "100", "--eps": "0.1"}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    argv = ["certify", "--run", str(run_dir), "--samples", "5", "--device", "cpu"]
    for k, v in base.items():
        argv += [k, v]
    assert main(argv) == 2
    assert msg in capsys.readouterr().err


def test_sharded_records_equal_one_process(run_dir, monkeypatch):
    """Two ranks (each certifying its shard of chunks of a :class:`abstain.chunks.ChunkedJob`,
    the one place work is sharded) give exactly the records of one process."""
    from abstain.checkpoint import load_checkpoint
    from abstain.chunks import ChunkedJob
    from abstain.data import load
    from abstain.smoothing.records import certify_chunk, plan_chunks

    model, _ = load_checkpoint(run_dir)
    data = load("digits", "test")
    idx = torch.arange(0, 60, 3)
    kw = dict(num_classes=10, sigma=0.5, eps=[0.1], n0=10, n=100, alpha=0.01, batch_size=128, seed=3, chunk=4)
    one = certify_records(model, data.x[idx], data.y[idx], idx, **kw)
    plan = plan_chunks(model, device=torch.device("cpu"), **kw)
    parts = []
    for r in range(2):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        parts.append(ChunkedJob(len(idx), plan.chunk).run(
            lambda k, rows: certify_chunk(plan, k, data.x[idx[rows]], data.y[idx[rows]], idx[rows])))
    merged = {k: np.concatenate([p[k] for p in parts]) for k in one}
    order = np.argsort(merged["index"])
    for k in one:
        if k != "seconds":
            assert np.array_equal(merged[k][order], one[k]), k
    assert len(parts[0]["index"]) + len(parts[1]["index"]) == 20 and len(parts[0]["index"]) == 12


def test_metrics_and_comparison_from_records():
    cols = {"index": np.arange(4), "label": np.array([0, 1, 2, 3]), "pred": np.array([0, -1, 2, 1]),
            "samples": np.array([10, 10, 10, 10]), "radius": np.array([0.5, 0.0, 0.05, 0.3]),
            "certified@0.1": np.array([1, 0, 0, 1]), "certified@0.2": np.array([1, 0, 0, 1])}
    m = certify_metrics(cols, [0.1])["0.1"]
    assert m["rob_acc"] == 0.25 and m["rob_inacc"] == 0.25 and m["nonrob_acc"] == 0.25
    assert m["nonrob_inacc"] == 0.25 and m["abstain"] == 0.25 and m["nat_acc"] == 0.5
    seq = {**cols, "samples": np.array([1, 2, 3, 4]), "certified@0.1": np.array([1, 0, 1, 1])}
    c = sequential_comparison(cols, seq, [0.1])
    assert c["samples_ratio"] == 4.0 and c["decision_agreement"] == 0.75

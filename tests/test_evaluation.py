"""evaluate(): a model defined here (outside the package) through the API and the CLI with
identical records; run directories; DataLoaders and batch sizes; saved evidence; errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import abstain
from abstain import data
from abstain.checkpoint import save_checkpoint
from abstain.cli import main
from abstain.errors import InputError
from abstain.evaluation import evaluate, record_columns
from abstain.metrics import partition
from abstain.models import NormalizedModel
from abstain.models import create as create_model
from abstain.records import read_records

MEAN, STD = 0.4, 0.3


class TinyNet(nn.Module):
    """A user's model that expects inputs normalised with (MEAN, STD)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 8 * 8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def make_model(num_classes: int = 10) -> nn.Module:
    """The factory the CLI imports (``--model test_evaluation:make_model``)."""
    return TinyNet(num_classes)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    train = data.load("digits", "train")
    m = make_model(10)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(3):
        perm = torch.randperm(len(train))
        for i in range(0, len(train), 64):
            b = perm[i:i + 64]
            loss = nn.functional.cross_entropy(m((train.x[b] - MEAN) / STD), train.y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.eval()
    d = tmp_path_factory.mktemp("weights")
    torch.save({"state_dict": {f"module.{k}": v for k, v in m.state_dict().items()}}, d / "w.pt")
    return m, d / "w.pt"


def test_own_model_cli_and_api_give_identical_records(trained, tmp_path, monkeypatch) -> None:
    m, weights = trained
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    args = ["evaluate", "--model", "test_evaluation:make_model", "--weights", str(weights),
            "--data", "digits", "--num-classes", "10", "--out", str(out), "--normalize", str(MEAN), str(STD),
            "--eps", "0.05", "0.1", "--steps", "20", "--samples", "80", "--batch-size", "32"]
    assert main(args) == 0
    rec = read_records(out / "records" / "evaluate.csv")
    assert list(rec) == ["index", "label", "pred", "robust@0.05", "robust@0.1", "robust@0.2"]

    test = data.load("digits", "test")
    idx = data.balanced_subset(test.y, 80, 10, seed=0)
    res = abstain.evaluate(m, test.subset(idx), eps=[0.05, 0.1], steps=20, batch_size=32,
                           normalize=((MEAN,), (STD,)), device="cpu")
    cols = record_columns(res)
    assert np.array_equal(rec["index"], idx.numpy()[cols["index"]])
    for k in ("label", "pred", "robust@0.05", "robust@0.1", "robust@0.2"):
        assert np.array_equal(rec[k], cols[k].astype(rec[k].dtype)), k
    results = json.loads((out / "results.json").read_text())["evaluate"]
    assert results["eps"]["0.1"] == pytest.approx(partition(cols["label"], cols["pred"], cols["robust@0.1"]))
    assert results["meta"]["samples"] == 80 and results["meta"]["n"] == 80
    assert 0.0 < results["eps"]["0.1"]["rob_acc"] < results["nat_acc"]
    assert not m.training                                   # the user's eval mode is kept
    m.train()
    evaluate(m, test.subset(idx[:4]), eps=0.05, steps=2, device="cpu", normalize=((MEAN,), (STD,)))
    assert m.training and m.bn.training                      # and a training mode restored
    m.eval()


def test_records_are_monotone_and_independent_of_batch_size_and_loader(trained) -> None:
    m, _ = trained
    test = data.load("digits", "test").subset(torch.arange(0, 450, 5))
    norm_model = NormalizedModel(m, (MEAN,), (STD,))
    a = evaluate(norm_model, test, eps=0.08, steps=20, batch_size=64, device="cpu")
    b = evaluate(norm_model, DataLoader(test, batch_size=7), eps=0.08, steps=20, device="cpu")
    for k in record_columns(a):
        assert np.array_equal(a[k], b[k]), k
    assert (a["robust@0.16"] <= a["robust@0.08"]).all()      # nested balls: flags monotone
    part = a["partition"]["0.08"]
    assert sum(part[k] for k in ("rob_acc", "rob_inacc", "nonrob_acc", "nonrob_inacc")) == pytest.approx(1.0)
    assert 0 < a["robust@0.08"].sum() < len(test)


def test_saved_adversarial_inputs_are_verified_evidence(trained, tmp_path) -> None:
    from safetensors.torch import load_file

    m, _ = trained
    test = data.load("digits", "test").subset(torch.arange(60))
    norm_model = NormalizedModel(m, (MEAN,), (STD,))
    path = tmp_path / "adv.safetensors"
    res = evaluate(norm_model, test, eps=0.1, steps=20, device="cpu", save_adversarial=str(path),
                   norm="linf")
    saved = load_file(str(path))
    for e in (0.1, 0.2):
        idx, adv = saved[f"index@{e:g}"], saved[f"adv@{e:g}"]
        nonrob = np.nonzero(~res[f"robust@{e:g}"])[0]
        assert np.array_equal(idx.numpy(), nonrob) and len(nonrob) > 0
        x = test.x[idx]
        with torch.no_grad():
            assert (norm_model(adv).argmax(1) != norm_model(x).argmax(1)).all()
        assert (adv - x).abs().amax() <= e + 1e-6 and adv.min() >= 0 and adv.max() <= 1


def test_run_directory_cli_and_overwrite(trained, tmp_path, capsys) -> None:
    torch.manual_seed(1)
    run = tmp_path / "run"
    model = create_model("mlp", 10, in_features=64, hidden=16, depth=1)
    save_checkpoint(run, model, {"arch": "mlp", "num_classes": 10, "dataset": "digits", "data_root": None,
                                 "model_kwargs": {"in_features": 64, "hidden": 16, "depth": 1}})
    base = ["evaluate", "--run", str(run), "--eps", "0.02", "--steps", "5", "--samples", "30"]
    assert main(base + ["--no-double-eps"]) == 0
    rec = read_records(run / "records" / "evaluate.csv")
    assert list(rec) == ["index", "label", "pred", "robust@0.02"] and len(rec["index"]) == 30
    sec = json.loads((run / "results.json").read_text())["evaluate"]
    assert set(sec["eps"]) == {"0.02"} and sec["meta"]["steps"] == 5
    assert main(base) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(base + ["--overwrite"]) == 0
    assert "robust@0.04" in read_records(run / "records" / "evaluate.csv")


@pytest.mark.parametrize("extra,needle", [
    (["--eps", "-0.1"], "eps must be >= 0"),
    (["--eps", "0.1", "--model", "no_such_module_xyz:f", "--data", "digits"], "cannot import module"),
    (["--eps", "0.1", "--model", "test_evaluation", "--data", "digits"], "package.module:factory"),
    (["--eps", "0.1", "--model", "test_evaluation:make_model", "--data", "digits", "--normalize", "0.5"],
     "MEAN... STD..."),
    (["--eps", "0.1"], "either --run DIR or --model"),
])
def test_cli_refuses_bad_arguments(extra, needle, tmp_path, capsys) -> None:
    args = ["evaluate", "--out", str(tmp_path / "o")] + extra
    if "--model" not in extra and "--eps" in extra and "-0.1" in extra:
        args = ["evaluate", "--run", str(tmp_path)] + extra
    if extra == ["--eps", "0.1"]:
        args = ["evaluate"] + extra
    assert main(args) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o" / "records").exists()


def test_api_refuses_bad_data_and_exports_lazily() -> None:
    assert abstain.evaluate is abstain.api.evaluate
    m = nn.Sequential(nn.Flatten(), nn.Linear(2, 3))
    ds = torch.utils.data.TensorDataset(torch.rand(5, 2) * 3, torch.zeros(5, dtype=torch.long))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        evaluate(m, ds, eps=0.1, device="cpu")
    ok = torch.utils.data.TensorDataset(torch.rand(5, 2), torch.zeros(5, dtype=torch.long))
    with pytest.raises(InputError, match="eps must be >= 0"):
        evaluate(m, ok, eps=[0.1, -1.0], device="cpu")
    with pytest.raises(InputError, match="batch_size"):
        evaluate(m, ok, eps=0.1, batch_size=0)


def test_sharded_ranks_give_the_records_of_one_process(trained, monkeypatch) -> None:
    """Two simulated ranks, each computing its chunks of a :class:`abstain.chunks.ChunkedJob`
    (chunks rank, rank + world, …; the one place work is sharded), merged by index give
    exactly the single-process records."""
    from abstain import distributed
    from abstain.chunks import ChunkedJob

    m, _ = trained
    test = data.load("digits", "test").subset(torch.arange(0, 450, 9))
    model = NormalizedModel(m, (MEAN,), (STD,))
    single = evaluate(model, test, eps=0.08, steps=10, batch_size=16, device="cpu")

    def chunk(k, rows):
        return record_columns(evaluate(model, test.subset(rows), eps=0.08, steps=10, batch_size=16, device="cpu",
                                       index_offset=int(rows[0])))

    parts = []
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for r in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        parts.append(ChunkedJob(len(test), 7).run(chunk))
    assert set(parts[0]["index"]) == {i for k in range(0, 8, 2) for i in range(7 * k, min(7 * k + 7, 50))}
    merged = {k: np.concatenate([p[k] for p in parts]) for k in record_columns(single)}
    order = np.argsort(merged["index"])
    for k in record_columns(single):
        assert np.array_equal(merged[k][order], single[k]), k


# ------------------------------------------------------- GPU-sized defaults (issue 17, item 10)
def test_certify_default_chunk_fills_the_selection_batch() -> None:
    """At n = 100,000 the default chunk held ONE input (4·1000 // 100,000 = 0): the selection
    pass then ran n0 = 100 samples in a forward batch of 1000. Now a chunk holds at least
    ⌈batch_size / n0⌉ inputs, so that pass fills a whole batch."""
    import math

    from abstain.smoothing.records import default_chunk

    for n0, n, bs in [(100, 100_000, 1000), (100, 100_000, 10_000), (64, 10_000, 1000), (16, 120, 60)]:
        c = default_chunk(n, bs, False, n0)
        assert c * n0 >= bs and c == max(1, min(64, 4 * bs // n), math.ceil(bs / n0))
    assert default_chunk(100_000, 1000, False, 100) == 10
    assert default_chunk(400, 200, False, 1000) == 2                 # the old bound still applies
    assert default_chunk(100_000, 1000, True, 100) == 64             # sequential: unchanged


class _Probe(nn.Module):
    """A small conv net that notes, per forward pass, the batch size and whether the input
    came in channels_last memory format."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
        self.seen: list[tuple[int, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((x.shape[0], x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
                          and not x.is_contiguous()))
        return self.net(x)


def _rounding_bound(net: nn.Sequential, x: torch.Tensor) -> float:
    """A bound on |float32 logits - exact logits| of ``_Probe.net`` (conv 3x3x3, ReLU, linear)
    in any summation order: a length-n float32 dot product plus bias is within
    gamma_(n+1) = (n+1)u / (1 - (n+1)u) times the sum of its terms' magnitudes of the exact
    value (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 3.5); ReLU does
    not grow an error, the linear layer carries the conv's through |W|."""
    conv, linear = net[0], net[3]
    u = torch.finfo(torch.float32).eps / 2

    def gamma(n: int) -> float:
        return (n + 1) * u / (1 - (n + 1) * u)

    with torch.no_grad():
        x64 = x.double()
        w1, b1 = conv.weight.double(), conv.bias.double()
        w2, b2 = linear.weight.double(), linear.bias.double()
        hidden_err = gamma(w1[0].numel()) * F.conv2d(x64.abs(), w1.abs(), b1.abs())
        hidden = F.relu(F.conv2d(x64, w1, b1)).flatten(1) + hidden_err.flatten(1)
        out_err = gamma(w2.shape[1]) * (hidden @ w2.abs().T + b2.abs()) + hidden_err.flatten(1) @ w2.abs().T
    return float(out_err.max())


def test_evaluation_batch_default_and_channels_last(monkeypatch) -> None:
    from abstain import evaluation
    from abstain.data.base import TensorDataset

    assert evaluation.default_batch_size("cpu") == 256
    assert evaluation.default_batch_size(torch.device("cuda", 0)) == 1024
    torch.manual_seed(0)
    model = _Probe()
    ds = TensorDataset(torch.rand(300, 3, 8, 8), torch.arange(300) % 3, 3, "probe")
    ref = evaluate(model, ds, eps=0.05, steps=3, device="cpu", show_progress=False, attack="apgd-ce")
    assert model.seen[0] == (256, False)                     # CPU default batch, NCHW
    # the CUDA path (channels_last for 4-D inputs), switched on here on the CPU
    monkeypatch.setattr(evaluation, "uses_channels_last", lambda dev, x: x.dim() == 4)
    model.seen.clear()
    out = evaluate(model, ds, eps=0.05, steps=3, device="cpu", show_progress=False, attack="apgd-ce",
                   batch_size=100)
    assert model.seen and all(cl for _, cl in model.seen), model.seen[:3]   # attacks included
    assert model.seen[0][0] == 100
    assert model.net[0].weight.is_contiguous()              # the model's memory format is restored
    # the same convolution in another memory format differs only by rounding: the logits agree
    # within the float32 error bound of this net, and the flags agree (no sample of this net
    # sits that close to a flip)
    x = ds.x[:50]
    with torch.no_grad():
        a = model.net(x)
        b = model.net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    model.net.to(memory_format=torch.contiguous_format)
    assert float((a - b).abs().max()) <= 2 * _rounding_bound(model.net, x)
    for k in ("index", "label", "pred", "robust@0.05", "robust@0.1"):
        assert np.array_equal(ref[k], out[k]), k

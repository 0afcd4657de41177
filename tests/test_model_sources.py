"""One model source for every command: a model defined HERE, outside the package, goes through
``train --init MODULE:FACTORY``, ``evaluate/certify --model`` and ``abstain --robust/--core
MODULE:FACTORY``, and gives the same records as the same weights loaded from a run directory."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from abstain.cli import main
from abstain.errors import CheckpointError, ConfigError
from abstain.records import read_records
from abstain.sources import from_factory, from_run, resolve

ROOT = Path(__file__).resolve().parents[1]


class TinyDigitsNet(nn.Module):
    """A user's own model: 8x8 digits in [0, 1] -> logits."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def make(num_classes: int = 10) -> nn.Module:
    return TinyDigitsNet(num_classes)


SPEC = f"{__name__}:make"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("own") / "run"
    rc = main(["train", "--config", str(ROOT / "configs" / "digits-std.toml"), "--init", SPEC,
               "--set", "train.epochs=2", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    return out


def _same_records(a: Path, b: Path, skip: tuple[str, ...] = ()) -> None:
    ra, rb = read_records(a), read_records(b)
    assert set(ra) == set(rb)
    for k in ra:
        if k not in skip:
            assert np.array_equal(ra[k], rb[k]), k


def test_train_init_factory_records_the_factory(run_dir):
    with pytest.raises(CheckpointError, match="--trust-code"):     # a run directory never runs code
        from_run(run_dir)
    src = from_run(run_dir, factory=SPEC)
    assert isinstance(src.model, TinyDigitsNet) and src.meta["arch"] == SPEC and src.num_classes == 10
    own = from_factory(SPEC, str(run_dir / "model.safetensors"), data="digits")
    for p, q in zip(src.model.parameters(), own.model.parameters()):
        assert torch.equal(p, q)


def test_evaluate_and_certify_own_model_equal_the_run(run_dir, tmp_path):
    w = str(run_dir / "model.safetensors")
    common = ["--eps", "0.1", "--steps", "5", "--samples", "40", "--device", "cpu"]
    assert main(["evaluate", "--run", str(run_dir), "--model", SPEC, "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["evaluate", "--model", SPEC, "--weights", w, "--data", "digits",
                 "--out", str(tmp_path / "b"), *common]) == 0
    _same_records(tmp_path / "a" / "records" / "evaluate.csv", tmp_path / "b" / "records" / "evaluate.csv")
    cert = ["--sigma", "0.25", "--eps", "0.1", "--n0", "20", "--n", "200", "--samples", "20",
            "--batch-size", "100", "--device", "cpu"]
    assert main(["certify", "--run", str(run_dir), "--trust-code", "--out", str(tmp_path / "c"), *cert]) == 0
    assert main(["certify", "--model", SPEC, "--weights", w, "--data", "digits",
                 "--out", str(tmp_path / "d"), *cert]) == 0
    _same_records(tmp_path / "c" / "records" / "certify.csv", tmp_path / "d" / "records" / "certify.csv",
                  skip=("seconds",))


def test_abstain_with_factory_models_equals_run_dirs(run_dir, tmp_path):
    w = str(run_dir / "model.safetensors")
    common = ["--selector", "eri", "--eps", "0.1", "--steps", "5", "--samples", "40", "--device", "cpu"]
    assert main(["abstain", "--robust", str(run_dir), "--core", str(run_dir), "--trust-code",
                 "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["abstain", "--robust", SPEC, "--robust-weights", w, "--core", SPEC, "--core-weights", w,
                 "--data", "digits", "--out", str(tmp_path / "b"), *common]) == 0
    name = "records/abstain-eri-eps0.1.csv"
    _same_records(tmp_path / "a" / name, tmp_path / "b" / name)


def test_resolve_errors_name_the_problem(run_dir, tmp_path):
    with pytest.raises(ConfigError, match="needs --data"):
        resolve(SPEC, None)
    with pytest.raises(ConfigError, match="not 'package.module:factory'"):
        resolve(str(tmp_path / "nothing-here"))
    with pytest.raises(ConfigError, match="drop --robust-weights|weights come with it"):
        resolve(str(run_dir), "w.safetensors", flag="--robust")
    with pytest.raises(ConfigError, match="cannot import module"):
        resolve("no_such_module_xyz:make", None, data="digits")
    rc = main(["evaluate", "--run", str(run_dir), "--eps", "0.1", "--normalize", "0.5",
               "--out", str(tmp_path / "n")])
    assert rc == 2 and not (tmp_path / "n").exists()


def test_python_api_mirrors_the_commands(run_dir, tmp_path):
    """abstain.certify / abstain.compose take an nn.Module and a Dataset and give the records
    of the commands, as Records with a summary keyed by radius."""
    import abstain
    from abstain.data import balanced_subset

    src = from_run(run_dir, trust_code=True)
    test = src.load_data("test")
    sub = test.subset(balanced_subset(test.y, 20, test.num_classes, seed=0))
    cols = abstain.certify(src.model, sub, sigma=0.25, eps=[0.1], n0=20, n=200, noise_batch_size=100, device="cpu")
    assert main(["certify", "--run", str(run_dir), "--trust-code", "--out", str(tmp_path / "c"), "--sigma", "0.25",
                 "--eps", "0.1", "--n0", "20", "--n", "200", "--samples", "20", "--noise-batch-size", "100",
                 "--device", "cpu"]) == 0
    cli = read_records(tmp_path / "c" / "records" / "certify.csv")
    for k in ("pred", "count", "certified@0.1", "certified@0.2"):
        assert np.array_equal(np.asarray(cols[k]), cli[k]), k
    res = abstain.compose(src.model, src.model, sub, selector="eri", eps=0.1, steps=5, device="cpu")
    assert main(["abstain", "--robust", str(run_dir), "--core", str(run_dir), "--selector", "eri", "--trust-code",
                 "--eps", "0.1", "--steps", "5", "--samples", "20", "--device", "cpu",
                 "--out", str(tmp_path / "a")]) == 0
    cli = read_records(tmp_path / "a" / "records" / "abstain-eri-eps0.1.csv")
    for k in ("pred", "robust@0.1", "robust@0.2", "h.pred@0.1", "h.rob_acc@0.1", "core.robust@0.1"):
        assert np.array_equal(np.asarray(res[k]).astype(cli[k].dtype), cli[k]), k
    comp = res.summary["composition"][0.1]
    assert comp["rob_acc"] == pytest.approx(float(np.mean(cli["h.rob_acc@0.1"])))
    assert cols.summary["certified"][0.1] == cols.summary["certified"]["0.1"]

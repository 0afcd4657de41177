"""Numbers that cannot be trusted are refused (issue 16, item 2): NaN/inf logits, weights or
normalisation, a model whose output does not match the dataset's classes, and a training
run whose loss stops being finite. Each is one line on stderr, exit 2, and no records.

Before, each of these "evaluated" to 90% robust inaccuracy: argmax of NaN logits is class 0
whatever the input, so no attack changes it and every sample counts as robust.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from abstain.errors import InputError

from reliability_helpers import assert_clean_refusal, gauss3_config, one_thread, run_main  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
EVAL = ["--data", "digits", "--eps", "0.05", "--steps", "2", "--samples", "20", "--device", "cpu"]
CERT = ["--data", "digits", "--sigma", "0.25", "--eps", "0.1", "--n0", "8", "--n", "32",
        "--samples", "10", "--device", "cpu"]


class Net(nn.Module):
    def __init__(self, num_classes: int = 10, fill: float | None = None, out_scale: float = 1.0) -> None:
        super().__init__()
        self.lin = nn.Linear(64, num_classes)
        self.out_scale = out_scale
        if fill is not None:
            with torch.no_grad():
                self.lin.weight[0, 0] = fill

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1)) * self.out_scale


def nan_logits() -> nn.Module:
    return Net(out_scale=float("nan"))


def inf_logits() -> nn.Module:
    return Net(out_scale=float("inf"))


def nan_weights() -> nn.Module:
    return Net(fill=float("nan"))


def inf_weights() -> nn.Module:
    return Net(fill=float("-inf"))


def three_logits() -> nn.Module:
    return Net(num_classes=3)


def fine(num_classes: int = 10) -> nn.Module:
    return Net(num_classes)


def _spec(name: str) -> str:
    return f"{__name__}:{name}"


def _no_records(out: Path) -> None:
    assert not list(out.rglob("*.csv")) and not (out / "results.json").exists(), sorted(out.rglob("*"))


@pytest.mark.parametrize("factory,needle", [
    ("nan_logits", "nan or infinite logits"), ("inf_logits", "nan or infinite logits"),
    ("nan_weights", "nan or infinite"), ("inf_weights", "nan or infinite"),
    ("three_logits", "3 logits"),
])
@pytest.mark.parametrize("command", ["evaluate", "certify"])
def test_untrustworthy_models_are_refused(command, factory, needle, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = run_main([command, "--model", _spec(factory), "--random-init", "--out", out,
                           *(EVAL if command == "evaluate" else CERT)], capsys)
    assert rc == 2
    assert_clean_refusal(rc, err, needle)
    if out.exists():
        _no_records(out)


@pytest.mark.parametrize("norm", [["nan", "0.5"], ["0.5", "inf"], ["0.5", "nan"]])
def test_non_finite_normalisation_is_refused(norm, tmp_path, capsys):
    rc, _, err = run_main(["evaluate", "--model", _spec("fine"), "--random-init", "--out", tmp_path / "o", *EVAL,
                           "--normalize", *norm], capsys)
    assert rc == 2
    assert_clean_refusal(rc, err, "--normalize", "finite")


def test_num_classes_that_do_not_match_the_dataset_are_refused(tmp_path, capsys):
    rc, _, err = run_main(["evaluate", "--model", _spec("fine"), "--random-init", "--num-classes", "3",
                           "--out", tmp_path / "o", *EVAL], capsys)
    assert rc == 2
    assert_clean_refusal(rc, err, "3 classes", "10")


def test_the_python_api_refuses_nan_logits():
    from abstain import data
    from abstain.evaluation import evaluate

    ds = data.load("digits", "test").subset(torch.arange(8))
    with pytest.raises(InputError, match="NaN or infinite logits"):
        evaluate(nan_logits(), ds, eps=0.05, steps=1, device="cpu", show_progress=False)
    # the check is not vacuous: the same call on a sound model works
    res = evaluate(fine(), ds, eps=0.05, steps=1, device="cpu", show_progress=False)
    assert len(res["index"]) == 8




def test_training_stops_at_the_first_non_finite_loss(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(gauss3_config(epochs=2, batch_size=16))
    out = tmp_path / "run"
    rc, _, err = run_main(["train", "--config", cfg, "--out", out, "--device", "cpu",
                           "--set", "train.lr=1e30"], capsys)
    msg = assert_clean_refusal(rc, err, "diverged", "epoch 1, batch", "train.lr")
    assert rc == 2
    assert "no checkpoint was written" in msg
    # nothing left behind: the corrected command runs as it is
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")]
    rc, _, err = run_main(["train", "--config", cfg, "--out", out, "--device", "cpu"], capsys)
    assert rc == 0, err


class NanAfter(nn.Module):
    """An MLP whose training-mode output turns NaN after ``limit`` training batches."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))
        self.limit, self.calls = limit, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.training:
            self.calls += 1
            if self.calls > self.limit:
                return out * float("nan")
        return out


def test_divergence_later_keeps_the_last_good_checkpoint(tmp_path):
    """A loss that turns NaN at the 2nd batch of epoch 2 stops the run there; the epoch-1
    checkpoint stays, with finite weights."""
    import math

    from abstain import checkpoint, data
    from abstain.config import TrainSettings
    from abstain.train.loop import fit
    from abstain.train.state import TrainingDiverged

    ds = data.load("gauss3", "train")
    per_epoch = math.ceil(len(ds) / 64)
    with pytest.raises(TrainingDiverged, match=rf"epoch 2, batch 2/{per_epoch}") as e:
        fit(NanAfter(per_epoch + 1), ds, TrainSettings(loss="standard", epochs=3, batch_size=64, lr=0.05),
            out=tmp_path, meta={"arch": "mlp", "num_classes": 3}, device="cpu")
    assert "last checkpoint" in str(e.value)
    state = checkpoint.load_train_state(tmp_path)
    assert state["epoch"] == 1 and not state["finished"]
    assert all(torch.isfinite(v).all() for v in state["model_last"].values())

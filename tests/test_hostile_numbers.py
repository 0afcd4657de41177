"""Numbers that cannot be trusted are refused everywhere they are computed (issue 25, item 3).

Each case is a reproduction from the issue: a model finite on the data but NaN off its
1/16 pixel grid (so NaN only at attack and noise points), a BatchNorm that stays in
training mode (records depended on --batch-size), a MODULE:FACTORY without weights, an ε in
0-255 units, and a certify radius no input can reach. Each is one line on stderr, exit 2,
and no records; the flags that accept them on purpose (--random-init,
--allow-batch-dependent) are checked to work.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from abstain.model_checks import batch_tolerance, check_batch_independent
from abstain.errors import InputError

from reliability_helpers import assert_clean_refusal, one_thread, run_main  # noqa: F401

EVAL = ["--data", "digits", "--eps", "0.05", "--steps", "3", "--samples", "20", "--device", "cpu"]
CERT = ["--data", "digits", "--sigma", "0.25", "--eps", "0.1", "--n0", "8", "--n", "32",
        "--samples", "10", "--device", "cpu"]


class OffGrid(nn.Module):
    """Finite logits on inputs on the digits' 1/16 grid, NaN anywhere else."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.lin = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        off = ((x * 16 - torch.round(x * 16)).abs() > 1e-4).any(dim=1, keepdim=True)
        out = self.lin(x)
        return torch.where(off, torch.full_like(out, float("nan")), out)


class TrainModeBN(nn.Module):
    """A BatchNorm that normalises with the batch's statistics whatever the module's mode."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.lin = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x.flatten(1))
        return F.batch_norm(h, None, None, training=True) if h.shape[0] > 1 else h


def off_grid() -> nn.Module:
    torch.manual_seed(0)
    return OffGrid()


def train_bn() -> nn.Module:
    torch.manual_seed(0)
    return TrainModeBN()


def linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def _spec(name: str) -> str:
    return f"{__name__}:{name}"


def _no_records(out) -> None:
    assert not (out / "records").exists() or not any((out / "records").iterdir())


@pytest.mark.parametrize("command,where", [("evaluate", "attack point"), ("certify", "noise point")])
def test_nan_only_off_the_data_grid_is_refused_naming_the_first_sample(command, where, tmp_path, capsys):
    out = tmp_path / "o"
    rc, _, err = run_main([command, "--model", _spec("off_grid"), "--random-init", "--out", out,
                           *(EVAL if command == "evaluate" else CERT)], capsys)
    msg = assert_clean_refusal(rc, err, "nan or infinite logits", where)
    assert rc == 2 and "sample " in msg, msg
    first = int(msg.split("sample ")[1].split(";")[0].split()[0].rstrip(","))
    assert first >= 0
    _no_records(out)


def test_a_batch_dependent_model_is_refused_unless_allowed(tmp_path, capsys):
    argv = ["evaluate", "--model", _spec("train_bn"), "--random-init", *EVAL]
    rc, _, err = run_main([*argv, "--out", tmp_path / "a"], capsys)
    assert rc == 2 and "depend on the batch" in assert_clean_refusal(rc, err, "--allow-batch-dependent")
    rc, _, err = run_main(["certify", "--model", _spec("train_bn"), "--random-init", *CERT,
                           "--out", tmp_path / "c"], capsys)
    assert rc == 2 and "depend on the batch" in assert_clean_refusal(rc, err)
    rc, _, err = run_main([*argv, "--out", tmp_path / "b", "--allow-batch-dependent"], capsys)
    assert rc == 0, err
    assert (tmp_path / "b" / "records" / "evaluate.csv").is_file()


def test_the_batch_check_accepts_a_batch_independent_model_and_its_bound_is_derived():
    model = linear().double()
    x = torch.rand(8, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    check_batch_independent(model, x, "m")           # no error
    with torch.no_grad():
        logits = model(x)
    p = 64 * 10 + 10
    want = 16 * math.sqrt(p) * torch.finfo(torch.float64).eps * max(1.0, float(logits.abs().max()))
    assert batch_tolerance(model, logits, torch.device("cpu")) == pytest.approx(want)
    with pytest.raises(InputError, match="depend on the batch"):
        check_batch_independent(train_bn(), x.float(), "m")
    check_batch_independent(train_bn(), x.float(), "m", allow=True)


@pytest.mark.parametrize("argv,flag", [
    (["evaluate", "--model", _spec("linear"), *EVAL], "--weights"),
    (["certify", "--model", _spec("linear"), *CERT], "--weights"),
    (["abstain", "--robust", _spec("linear"), "--core", _spec("linear"), "--data", "digits", "--selector", "eri",
      "--eps", "0.05", "--steps", "2", "--samples", "10", "--device", "cpu"], "--robust-weights"),
])
def test_missing_weights_are_refused_unless_random_init(argv, flag, tmp_path, capsys):
    rc, _, err = run_main([*argv, "--out", tmp_path / "o"], capsys)
    assert rc == 2
    assert_clean_refusal(rc, err, "no weights", flag, "--random-init")
    _no_records(tmp_path / "o")


def test_random_init_is_recorded(tmp_path, capsys):
    import json

    rc, _, err = run_main(["evaluate", "--model", _spec("linear"), "--random-init", *EVAL, "--out", tmp_path / "o"],
                          capsys)
    assert rc == 0, err
    meta = json.loads((tmp_path / "o" / "results.json").read_text())["evaluate"]["meta"]
    assert meta["random_init"] is True and meta["weights"] is None


@pytest.mark.parametrize("argv,needles", [
    (["evaluate", "--model", _spec("linear"), "--random-init", "--data", "digits", "--eps", "8"],
     ("more than 1", "8/255 = 0.0314")),
    (["evaluate", "--model", _spec("linear"), "--random-init", "--data", "digits", "--eps", "0.03", "300"],
     ("more than 1",)),
    (["evaluate", "--model", _spec("linear"), "--random-init", "--data", "digits", "--norm", "l2", "--eps", "9"],
     ("diameter 8", "64-dimensional")),
    (["abstain", "--robust", _spec("linear"), "--core", _spec("linear"), "--random-init", "--data", "digits",
      "--selector", "eri", "--eps", "8"], ("8/255 = 0.0314",)),
    (["certify", "--model", _spec("linear"), "--random-init", "--data", "digits", "--sigma", "0.25",
      "--eps", "64"], ("unreachable", "largest radius it can certify is 0.9529")),
    (["certify", "--model", _spec("linear"), "--random-init", "--data", "digits", "--sigma", "0.25",
      "--eps", "0.1", "--n", "5"], ("unreachable", "no radius can be certified")),
])
def test_radii_that_make_no_sense_are_refused_with_a_hint(argv, needles, tmp_path, capsys):
    rc, _, err = run_main([*argv, "--samples", "10", "--device", "cpu", "--out", tmp_path / "o"], capsys)
    assert rc == 2
    assert_clean_refusal(rc, err, *needles)
    _no_records(tmp_path / "o")

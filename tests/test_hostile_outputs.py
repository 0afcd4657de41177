"""Results are never silently written beside another model's or dataset's (issue 25, item 4):
``certify --model … --data digits --out R`` into a run R of another dataset, or a second
model's results into a directory holding a first model's, is refused without --overwrite;
every command's section records its dataset."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from reliability_helpers import assert_clean_refusal, one_thread, run_main, train_tiny_run  # noqa: F401

CERT = ["--sigma", "0.25", "--eps", "0.1", "--n0", "8", "--n", "64", "--samples", "10", "--device", "cpu"]
EVAL = ["--eps", "0.05", "--steps", "2", "--samples", "10", "--device", "cpu"]


def linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def other() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("outputs"))


def test_certify_into_a_run_of_another_dataset_is_refused(trained, tmp_path, capsys):
    run = Path(shutil.copytree(trained / "run", tmp_path / "run"))
    argv = ["certify", "--model", f"{__name__}:linear", "--random-init", "--data", "digits", "--out", run, *CERT]
    rc, _, err = run_main(argv, capsys)
    assert rc == 2
    assert_clean_refusal(rc, err, "'gauss3'", "'digits'", "--overwrite")
    assert not (run / "records" / "certify.csv").exists()
    rc, _, err = run_main([*argv, "--overwrite"], capsys)
    assert rc == 0, err
    section = json.loads((run / "results.json").read_text())["certify"]
    assert section["dataset"] == "digits" and section["model"] == f"{__name__}:linear"


def test_a_second_model_beside_the_first_is_refused(tmp_path, capsys):
    out = tmp_path / "o"
    rc, _, err = run_main(["evaluate", "--model", f"{__name__}:linear", "--random-init", "--data", "digits",
                           "--out", out, *EVAL], capsys)
    assert rc == 0, err
    rc, _, err = run_main(["certify", "--model", f"{__name__}:other", "--random-init", "--data", "digits",
                           "--out", out, *CERT], capsys)
    assert rc == 2
    assert_clean_refusal(rc, err, "'evaluate' results", f"{__name__}:other")
    rc, _, err = run_main(["certify", "--model", f"{__name__}:linear", "--random-init", "--data", "digits",
                           "--out", out, *CERT], capsys)     # the same model: its certification goes beside
    assert rc == 0, err
    assert set(json.loads((out / "results.json").read_text())) == {"evaluate", "certify"}

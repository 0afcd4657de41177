"""``abstain abstain`` checks batch dependence like evaluate and certify (issue 25, item 7).

Found: a model whose BatchNorm normalises with the batch's statistics whatever its mode was
refused by evaluate and certify but accepted by ``abstain abstain`` as F or as the core, whose
records then depend on ``--eval-batch-size``. Now both models are checked, one line, exit 2,
and ``--allow-batch-dependent`` (the flag of evaluate) accepts them on purpose.
"""
from __future__ import annotations

import pytest

from reliability_helpers import assert_clean_refusal, one_thread, run_main  # noqa: F401

ABSTAIN = ["abstain", "--data", "digits", "--selector", "eri", "--eps", "0.05", "--steps", "2",
           "--samples", "10", "--random-init", "--device", "cpu"]


def _spec(name: str) -> str:
    return f"test_hostile_numbers:{name}"     # the factories of the NaN / batch-dependence probes


@pytest.mark.parametrize("robust,core,what", [("train_bn", "linear", "--robust"), ("linear", "train_bn", "--core")])
def test_a_batch_dependent_robust_or_core_model_is_refused(robust, core, what, tmp_path, capsys):
    out = tmp_path / "o"
    rc, _, err = run_main([*ABSTAIN, "--robust", _spec(robust), "--core", _spec(core), "--out", out], capsys)
    assert rc == 2
    msg = assert_clean_refusal(rc, err, "depend on the batch", "--allow-batch-dependent")
    assert f"the {what} model" in msg, msg
    assert not (out / "records").exists() or not any((out / "records").iterdir())


def test_allow_batch_dependent_accepts_it_on_purpose(tmp_path, capsys):
    out = tmp_path / "o"
    rc, _, err = run_main([*ABSTAIN, "--robust", _spec("train_bn"), "--core", _spec("linear"), "--out", out,
                           "--allow-batch-dependent"], capsys)
    assert rc == 0, err
    assert (out / "records" / "abstain-eri-eps0.05.csv").is_file()


def test_batch_independent_models_pass_the_check(tmp_path, capsys):
    rc, _, err = run_main([*ABSTAIN, "--robust", _spec("linear"), "--core", _spec("linear"), "--out", tmp_path / "o"],
                          capsys)
    assert rc == 0, err

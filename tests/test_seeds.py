"""One seed derivation (abstain.seeds) and random starts keyed by dataset index everywhere:
``robust@ε`` of ``abstain evaluate`` and of ``abstain abstain`` agree (same model, seed and
attack) for any batch size and any subset."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from abstain import evaluate, records
from abstain.seeds import derive, generator
from abstain.selectors.eri import RobustnessIndicator
from abstain.selectors.evaluate import abstain_records, core_records

from abstain_fixtures import EPS, digits_models
from reliability_helpers import run_main, train_tiny_run


def test_derive_root_tags_and_spread() -> None:
    assert derive(5) == 5
    assert derive(5, 1) == derive(5, 1)
    assert derive(5, "sr-conf") == derive(5, "sr-conf")
    seen = {derive(s, t) for s in range(20) for t in (0, 1, 2, "a", "b")}
    assert len(seen) == 100                                  # nearby tuples: unrelated seeds
    assert all(0 <= v < 2**63 for v in seen)
    a = torch.rand(4, generator=generator(3, "x"))
    assert torch.equal(a, torch.rand(4, generator=generator(3, "x")))
    assert not torch.equal(a, torch.rand(4, generator=generator(3, "y")))


@pytest.mark.parametrize("attack", ["apgd-ce", "strong"])
def test_selector_and_core_flags_equal_evaluate_for_any_batch(attack: str) -> None:
    _, test, robust, _ = digits_models()
    idx = torch.arange(0, 180, 3)                              # a subset: dataset indices matter
    x, y = test.x[idx], test.y[idx]
    ref = evaluate(robust, torch.utils.data.TensorDataset(test.x[:180], test.y[:180]), eps=[EPS],
                   steps=10, seed=4, attack=attack, show_progress=False, batch_size=7)
    want = {e: records.flag(ref, records.ROBUST, e)[idx.numpy()] for e in (EPS, 2 * EPS)}
    assert 0 < want[EPS].sum() < len(idx), "need a mix of robust and non-robust samples"
    for bs in (None, 1, 13):
        eri = RobustnessIndicator(robust, eps=EPS, steps=10, seed=4, attack=attack)
        rec = abstain_records(eri, x, y, idx.numpy(), batch_size=bs)
        for e in (EPS, 2 * EPS):
            np.testing.assert_array_equal(records.flag(rec, records.ROBUST, e), want[e])
        core = core_records(robust, x, y, idx.numpy(), eps=EPS, steps=10, seed=4, attack=attack,
                            batch_size=bs)
        np.testing.assert_array_equal(records.flag(core, records.ROBUST, EPS), want[EPS])


def test_cli_evaluate_and_abstain_agree(tmp_path, capsys) -> None:
    train_tiny_run(tmp_path)
    run = tmp_path / "run"
    common = ["--eps", "0.3", "--attack", "apgd-ce", "--steps", "8", "--seed", "3", "--samples", "45",
              "--device", "cpu"]
    rc, _, err = run_main(["evaluate", "--run", run, "--out", tmp_path / "ev", "--batch-size", "4", *common], capsys)
    assert rc == 0, err
    ev = records.read_records(tmp_path / "ev" / "records" / "evaluate.csv")
    for bs in ("5", "512"):
        out = tmp_path / f"ab{bs}"
        rc, _, err = run_main(["abstain", "--robust", run, "--core", run, "--selector", "eri",
                               "--out", out, "--batch-size", bs, *common], capsys)
        assert rc == 0, err
        ab = records.read_records(out / "records" / "abstain-eri-eps0.3.csv")
        order = np.argsort(ab["index"])
        np.testing.assert_array_equal(ab["index"][order], ev["index"])
        for e in (0.3, 0.6):
            np.testing.assert_array_equal(records.flag(ab, records.ROBUST, e)[order],
                                          records.flag(ev, records.ROBUST, e))
        np.testing.assert_array_equal(records.flag(ab, records.ROBUST, 0.3, "core")[order],
                                      records.flag(ev, records.ROBUST, 0.3))
    assert 0 < records.flag(ev, records.ROBUST, 0.3).sum() < 45

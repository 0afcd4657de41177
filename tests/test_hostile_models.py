"""Model behaviours that gave tracebacks are one line, exit 2 (issue 25, item 6), and a float64
model works: the attacks and the TRADES/ERA clean pass use the model's dtype (at least fp32)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from reliability_helpers import assert_clean_refusal, one_thread, run_main  # noqa: F401

EVAL = ["--data", "digits", "--eps", "0.1", "--steps", "5", "--samples", "20", "--device", "cpu"]


class Lin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.l = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l(x.flatten(1).to(self.l.weight.dtype))


class Detached(Lin):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).detach()


class InPlace(Lin):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(0.5)
        return super().forward(x)


def f64() -> nn.Module:
    return Lin().double()


def detached() -> nn.Module:
    return Detached()


def in_place() -> nn.Module:
    return InPlace()


@pytest.mark.parametrize("factory,needle", [("detached", "no gradient"), ("in_place", "in place")])
def test_model_behaviours_are_one_line(factory, needle, tmp_path, capsys):
    rc, _, err = run_main(["evaluate", "--model", f"{__name__}:{factory}", "--random-init", *EVAL,
                           "--out", tmp_path / "o"], capsys)
    assert rc == 2
    assert_clean_refusal(rc, err, needle)


def test_in_place_is_refused_by_certify_too(tmp_path, capsys):
    rc, _, err = run_main(["certify", "--model", f"{__name__}:in_place", "--random-init", "--data", "digits",
                           "--sigma", "0.25", "--eps", "0.1", "--n0", "8", "--n", "64", "--samples", "6",
                           "--device", "cpu", "--out", tmp_path / "o"], capsys)
    assert rc == 2
    assert_clean_refusal(rc, err, "in place")


def test_a_float64_model_is_evaluated_and_its_evidence_holds_in_float64(tmp_path, capsys):
    from abstain import data

    adv = tmp_path / "adv.safetensors"
    rc, _, err = run_main(["evaluate", "--model", f"{__name__}:f64", "--random-init", *EVAL, "--out", tmp_path / "o",
                           "--save-adversarial", adv], capsys)
    assert rc == 0, err
    from abstain.records import read_records

    rec = read_records(tmp_path / "o" / "records" / "evaluate.csv")
    test = data.load("digits", "test")
    model = f64().eval()
    x = test.x[torch.as_tensor(rec["index"])].double()
    with torch.no_grad():
        assert (model(x).argmax(1).numpy() == rec["pred"]).all()
    t = load_file(str(adv))
    idx, a = t["index@0.1"], t["adv@0.1"].double()
    assert idx.numel() == int((~rec["robust@0.1"].astype(bool)).sum())
    if idx.numel():
        xi = test.x[idx].double()
        # the saved evidence is float32: in the ball up to its rounding, in the box, and it flips
        assert float((a - xi).abs().max()) <= 0.1 + 1e-6 and float(a.min()) >= 0 and float(a.max()) <= 1
        pos = {int(i): k for k, i in enumerate(rec["index"])}
        with torch.no_grad():
            flipped = model(a).argmax(1).numpy() != rec["pred"][[pos[int(i)] for i in idx]]
        assert flipped.all()
    assert json.loads((tmp_path / "o" / "results.json").read_text())["evaluate"]["meta"]["random_init"]


def test_the_clean_pass_of_trades_and_era_uses_the_models_dtype():
    from abstain.losses.adversarial import _clean_eval

    x = torch.rand(5, 1, 8, 8)
    p, pred = _clean_eval(f64(), x)
    assert p.dtype == torch.float64
    with torch.no_grad():
        want = torch.softmax(f64()(x.double()), 1)
    assert torch.equal(p, want) and torch.equal(pred, want.argmax(1))
    p32, _ = _clean_eval(Lin(), x)
    assert p32.dtype == torch.float32

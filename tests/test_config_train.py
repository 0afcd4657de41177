"""Experiment configs (abstain.config) and the `abstain train` command."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from abstain import config
from abstain.cli import main
from abstain.errors import ConfigError

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

GOOD = """
[data]
name = "gauss3"
[model]
arch = "mlp"
[train]
loss = "trades"
schedule = "synthetic"
[loss]
eps = 0.1
"""


def test_defaults_come_from_the_preset():
    cfg = config.loads(GOOD)
    assert (cfg["train"]["epochs"], cfg["train"]["lr"], cfg["train"]["batch_size"]) == (20, 0.1, 10)
    assert cfg["train"]["momentum"] == 0.0 and cfg["train"]["weight_decay"] == 5e-4
    ft = config.loads(GOOD.replace('"synthetic"', '"finetune"'))
    assert (ft["train"]["epochs"], ft["train"]["lr"], ft["train"]["batch_size"]) == (50, 1e-3, 200)
    assert ft["loss"]["steps"] == 10 and ft["loss"]["era_inner"] == "targeted"


@pytest.mark.parametrize("text,words", [
    (GOOD + "bogus = 1\n", ["unknown key 'bogus'", "[loss]", "eps, norm, steps"]),
    (GOOD.replace("[model]", "[modle]"), ["unknown section [modle]", "[model]"]),
    (GOOD.replace("eps = 0.1", "eps = -0.1"), ["[loss] eps", ">= 0", "-0.1"]),
    (GOOD.replace("eps = 0.1", "eps = 8"), ["pixel"]),
    (GOOD.replace("eps = 0.1", 'eps = "0.1"'), ["[loss] eps must be a", "number", "str"]),
    (GOOD.replace('schedule = "synthetic"', "lr = 0"), ["[train] lr", "> 0"]),
    (GOOD.replace('schedule = "synthetic"', "lr = -0.1"), ["[train] lr", "> 0"]),
    (GOOD.replace('schedule = "synthetic"', "epochs = 2.5"), ["[train] epochs must be a", "integer"]),
    (GOOD.replace('schedule = "synthetic"', "epochs = true"), ["[train] epochs must be a", "bool"]),
    (GOOD.replace('schedule = "synthetic"', 'schedule = "cosine"'), ["[train] schedule", "scratch"]),
    (GOOD.replace('loss = "trades"', 'loss = "tardes"'), ["[train] loss", "trades"]),
    (GOOD.replace("eps = 0.1", "steps = 3"), ["[loss] eps is required", "trades"]),
    (GOOD.replace('name = "gauss3"', ""), ["[data] name is required"]),
    (GOOD + 'era_inner = "sideways"\n', ["era_inner", "untargeted-shared"]),
    (GOOD + "beta = -1\n", ["[loss] beta", ">= 0"]),
    (GOOD.replace("[data]", "[data]\nval_fraction = 1.0"), ["val_fraction", "[0, 1)"]),
    ("[data\n", ["not valid TOML"]),
])
def test_bad_configs_are_rejected_with_clear_errors(text, words):
    with pytest.raises(ConfigError) as e:
        config.loads(text)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_dump_load_roundtrip_and_diff(tmp_path):
    cfg = config.loads(GOOD.replace("[model]", '[model]\nkwargs = {hidden = 32, depth = 2}'))
    again = config.loads(config.dumps(cfg))
    assert again == cfg and config.diff(cfg, again) == []
    other = config.loads(GOOD.replace("eps = 0.1", "eps = 0.2"))
    assert config.diff(cfg, other) == ["loss.eps", "model.kwargs"]


def test_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(GOOD)
    cfg = config.load(p, ["train.lr=0.5", "loss.era_inner=untargeted-shared", "model.kwargs={hidden=8}"])
    assert cfg["train"]["lr"] == 0.5 and cfg["loss"]["era_inner"] == "untargeted-shared"
    assert cfg["model"]["kwargs"] == {"hidden": 8}
    with pytest.raises(ConfigError, match="unknown key 'lrr'"):
        config.load(p, ["train.lrr=0.5"])
    with pytest.raises(ConfigError, match="section.key=value"):
        config.load(p, ["lr=0.5"])


def test_every_shipped_config_validates():
    files = sorted(CONFIGS.glob("*.toml"))
    assert len(files) >= 8
    for f in files:
        cfg = config.load(f)
        assert cfg["train"]["loss"]


def _cli(*args: str) -> int:
    return main(["train", *args])


def test_cli_trains_refuses_existing_dir_and_changed_resume(tmp_path, capsys):
    cfgp = tmp_path / "g.toml"
    cfgp.write_text(GOOD.replace('loss = "trades"', 'loss = "standard"')
                    .replace('schedule = "synthetic"', 'schedule = "synthetic"\nepochs = 1\nbatch_size = 100'))
    out = tmp_path / "run"
    assert _cli("--config", str(cfgp), "--out", str(out), "--device", "cpu") == 0
    for name in ("model.safetensors", "meta.json", "train_state.pt", "config.toml", "log.jsonl",
                 "results.json"):
        assert (out / name).is_file(), name
    res = json.loads((out / "results.json").read_text())["train"]
    assert res["best_epoch"] == 1 and 0 <= res["val_nat_acc"] <= 1
    capsys.readouterr()
    assert _cli("--config", str(cfgp), "--out", str(out)) == 2
    assert "--resume" in capsys.readouterr().err
    assert _cli("--config", str(cfgp), "--out", str(out), "--resume", "--set", "train.lr=0.3",
                "--set", "loss.eps=0.2") == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "loss.eps" in err and "refused" in err
    assert _cli("--config", str(cfgp), "--out", str(out), "--resume") == 0  # finished: no-op
    assert _cli("--config", str(cfgp), "--out", str(out), "--overwrite", "--set", "train.seed=1") == 0
    assert "seed = 1" in (out / "config.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("eps = 0.1", "eps = -1"))
    assert _cli("--config", str(bad), "--out", str(tmp_path / "r2")) == 2
    assert "[loss] eps must be >= 0" in capsys.readouterr().err


def test_dumps_round_trips_any_string() -> None:
    """The config writer is tomli-w: strings with newlines, quotes, backslashes and control
    characters come back as written (the hand-written writer produced invalid TOML)."""
    from abstain import config

    cfg = config.validate({"data": {"name": "digits", "root": 'a\nb\x01"c\\d\ttab'},
                           "model": {"arch": "mlp", "kwargs": {"weird key": "x\ny", "n": 3}}})
    text = config.dumps(cfg)
    assert config.loads(text) == cfg
    assert "root" in text and "None" not in text


def test_paired_difference_matches_the_t_interval() -> None:
    import numpy as np
    from scipy.stats import t as student_t

    from abstain.metrics import paired_difference

    a, b = [0.9, 0.7, 0.65, 0.8], [0.5, 0.6, 0.6, 0.5]
    d = np.subtract(a, b)
    half = student_t.ppf(0.975, 3) * d.std(ddof=1) / 2          # by hand: t_{0.975,3}·s/√n
    got = paired_difference(a, b)
    assert got["mean"] == pytest.approx(d.mean())
    assert (got["ci95_low"], got["ci95_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    same = paired_difference([1.0, 2.0], [0.5, 1.5])
    assert same["ci95_low"] == same["ci95_high"] == pytest.approx(0.5)

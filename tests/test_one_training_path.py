"""``abstain train`` and every stage of ``abstain reproduce`` train through one function
(:func:`abstain.train.train_from_config`): every config key changes what a stage trains
exactly as it changes ``abstain train`` (issue 26: reproduce silently dropped ``augment``,
``amp``, ``channels_last``, ``compile``, ``sync_bn`` and ``[model] init``)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from abstain import config
from abstain.stages import _robust as R
from abstain.train import build

BASE = {
    "data": {"name": "gauss3", "val_fraction": 0.2},
    "model": {"arch": "mlp", "kwargs": {"hidden": 16, "depth": 2}},
    "train": {"loss": "standard", "schedule": "constant", "epochs": 1, "batch_size": 32, "lr": 0.05,
              "seed": 3},
    "loss": {},
}
# one non-default value for every key that reaches training (the [experiment] section only
# tells a stage which configs to combine; abstain train ignores it)
CHANGES = {
    "data.val_fraction": 0.3, "data.augment": "standard",
    "model.kwargs": {"hidden": 8, "depth": 1}, "model.init": "INIT",
    "train.loss": "trades", "train.epochs": 2, "train.batch_size": 16, "train.lr": 0.01,
    "train.schedule": "finetune", "train.momentum": 0.5, "train.weight_decay": 0.0,
    "train.seed": 5, "train.amp": "bf16", "train.channels_last": True, "train.compile": True,
    "train.sync_bn": True, "train.select": "last", "train.val_steps": 3,
    "loss.eps": 0.05, "loss.norm": "l2", "loss.steps": 2, "loss.step_size": 0.01, "loss.beta": 2.0,
    "loss.gamma": 3.0, "loss.variant": "authors", "loss.sigma": 0.1, "loss.k": 2,
}
SKIP_SCHEMA = {"experiment", "data.name", "model.arch", "data.root", "loss.era_inner"}


def test_every_key_is_covered() -> None:
    keys = {f"{s}.{k}" for s, sec in config.SCHEMA.items() for k in sec}
    assert "train.lr" in keys and "loss.eps" in keys
    missing = {k for k in keys - set(CHANGES) if k not in SKIP_SCHEMA and k.split(".")[0] not in SKIP_SCHEMA}
    assert not missing, f"add these keys to CHANGES: {sorted(missing)}"


def _cfg(dotted: str | None, value, init_dir: Path) -> dict:
    raw = {s: dict(v) for s, v in BASE.items()}
    if dotted is not None:
        sec, key = dotted.split(".")
        raw[sec][key] = str(init_dir) if value == "INIT" else value
        if dotted == "train.loss":
            raw["loss"]["eps"] = 0.05
        if dotted in ("loss.eps", "loss.steps", "loss.step_size", "loss.beta", "loss.gamma", "loss.norm"):
            raw["train"]["loss"] = "trades"
            raw["loss"].setdefault("eps", 0.05)
        if dotted == "loss.variant":
            raw["train"]["loss"], raw["loss"]["eps"] = "era", 0.05
        if dotted in ("loss.sigma", "loss.k"):
            raw["train"]["loss"] = "cra"
            raw["loss"]["sigma"] = raw["loss"].get("sigma", 0.1)
    return config.validate(raw)


def _capture(monkeypatch) -> list[dict]:
    calls: list[dict] = []

    def fake_fit(model, train_data, train, loss, **kw):
        calls.append({"state": {k: v.clone() for k, v in model.state_dict().items()},
                      "x": train_data.x.clone(), "val_x": None if kw["val_data"] is None else kw["val_data"].x.clone(),
                      "train": train, "loss": loss,
                      **{k: v for k, v in kw.items() if k not in ("out", "meta", "desc", "val_data")}})
        return model.eval()

    from abstain import checkpoint

    real_read_meta = checkpoint.read_meta
    monkeypatch.setattr(build, "fit", fake_fit)
    # nothing was trained, so no checkpoint was written: the summary reads no meta
    monkeypatch.setattr(checkpoint, "read_meta",
                        lambda d: real_read_meta(d) if (Path(d) / checkpoint.META_FILE).is_file() else {})
    return calls


def _same(a: dict, b: dict) -> bool:
    if set(a) != set(b):
        return False
    for k in a:
        if k == "state":
            if set(a[k]) != set(b[k]) or not all(torch.equal(a[k][n], b[k][n]) for n in a[k]):
                return False
        elif isinstance(a[k], torch.Tensor) or isinstance(b[k], torch.Tensor):
            if (a[k] is None) != (b[k] is None) or (a[k] is not None and not torch.equal(a[k], b[k])):
                return False
        elif a[k] != b[k]:
            return False
    return True


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("init") / "run"
    cfg = _cfg(None, None, d)
    build.train_from_config(config.validate({**cfg, "model": {**cfg["model"], "kwargs": {"hidden": 16, "depth": 2}}}),
                            d, "cpu")
    return d


@pytest.mark.parametrize("dotted", sorted(CHANGES))
def test_a_key_acts_on_reproduce_as_on_train(dotted: str, init_dir: Path, tmp_path: Path, monkeypatch) -> None:
    calls = _capture(monkeypatch)
    base, changed = _cfg(None, None, init_dir), _cfg(dotted, CHANGES[dotted], init_dir)
    ctx = SimpleNamespace(name="stage", work=tmp_path / "work", device="cpu")
    for cfg in (base, changed):
        build.train_from_config(cfg, tmp_path / "train", "cpu")              # abstain train
        R.train_experiment(ctx, "v", cfg["train"]["seed"], cfg)               # a reproduce stage
    train_base, stage_base, train_changed, stage_changed = calls
    assert _same(train_changed, stage_changed), f"{dotted}: the stage trains otherwise than abstain train"
    assert _same(train_base, stage_base)
    assert not _same(train_base, train_changed), f"{dotted} changes nothing that training receives"


def test_a_stages_pretrained_model_replaces_model_init(tmp_path: Path, monkeypatch) -> None:
    """In a stage, ``[experiment] init_from`` (the pre-trained model in memory) is the start:
    ``[model] init`` (where `abstain train` users keep that model) is not read."""
    calls = _capture(monkeypatch)
    cfg = _cfg("model.init", "INIT", tmp_path / "no-such-run")
    start, _ = build.build_model(_cfg(None, None, tmp_path), 3, (2,))
    for p in start.parameters():
        torch.nn.init.constant_(p, 0.5)
    ctx = SimpleNamespace(name="stage", work=tmp_path / "work", device="cpu")
    R.train_experiment(ctx, "v", 3, cfg, init_from=start)
    assert all(torch.equal(v, torch.full_like(v, 0.5)) for v in calls[0]["state"].values())

"""A training run from a validated config (:mod:`abstain.config`): the model of ``[model]``
(fresh, or initialised from a checkpoint or a published weights file) fitted on the data of
``[data]`` with the loss and settings of ``[train]``/``[loss]``."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch
from torch import nn

from .. import checkpoint  # checkpoint.read_meta is looked up at call time (tests replace it)
from .. import data as data_mod
from .. import models
from ..checkpoint import load_checkpoint, load_foreign_state_dict, load_state_into
from ..data import train_val_split
from ..errors import ConfigError
from ..foreign import load_published
from ..models import published
from ..sources import build_factory_model
from .loop import fit
from ..seeds import derive

if TYPE_CHECKING:
    from ..config import Config


def model_kwargs(arch: str, input_shape: tuple[int, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Fill the input geometry of the small models from the data (recorded in meta.json)."""
    kw = dict(kwargs)
    if arch == "mlp" and "in_features" not in kw:
        kw["in_features"] = int(np.prod(input_shape))
    if arch == "cnn" and len(input_shape) == 3:
        kw.setdefault("in_channels", int(input_shape[0]))
        kw.setdefault("input_size", int(input_shape[1]))
    return kw


def build_model(cfg: Mapping[str, Mapping[str, Any]], num_classes: int,
                input_shape: tuple[int, ...]) -> tuple[nn.Module, dict[str, Any]]:
    """The model of ``[model]``, initialised from ``init`` when given: a checkpoint
    directory of this project (same arch) or a foreign weights file (published layouts of
    RobustBench / Cohen et al. are mapped by :func:`abstain.foreign.load_published`)."""
    arch = cfg["model"]["arch"]
    init = cfg["model"]["init"]
    if ":" in arch:   # your own MODULE:FACTORY, with weights from init (a file) if given
        if cfg["model"]["kwargs"]:
            raise ConfigError(f"[model] kwargs cannot be passed to a factory ({arch})")
        if init and Path(init).is_dir():
            raise ConfigError(f"[model] init {init}: a factory model takes a weights file, not a run directory")
        return build_factory_model(arch, num_classes, init or None, flag="[model] arch"), {}
    kw = model_kwargs(arch, input_shape, cfg["model"]["kwargs"])
    if init:
        path = Path(init)
        if path.is_dir():
            meta = checkpoint.read_meta(path)
            if meta["arch"] != arch or int(meta["num_classes"]) != num_classes:
                raise ConfigError(f"[model] init {path} holds a {meta['arch']!r} model with "
                                  f"{meta['num_classes']} classes, not {arch!r} with {num_classes}")
            kw = {**dict(meta.get("model_kwargs", {})), **dict(cfg["model"]["kwargs"])}
            # the size guard and the regular-file checks
            model, _ = load_checkpoint(path, "cpu", **dict(cfg["model"]["kwargs"]))
            return model.train(), kw
        if not path.is_file():
            raise ConfigError(f"[model] init: no such checkpoint directory or file: {path}")
        if arch in published.PUBLISHED:
            mean, std = kw.pop("mean", None), kw.pop("std", None)
            if kw:
                raise ConfigError(f"[model] kwargs {sorted(kw)} cannot be combined with a published "
                                  f"{arch!r} checkpoint (only mean/std)")
            return load_published(arch, path, num_classes, mean=mean, std=std,
                                             return_kwargs=True)
        model = models.create(arch, num_classes, **kw)
        load_state_into(model, load_foreign_state_dict(path), source=str(path))
        return model, kw
    return models.create(arch, num_classes, **kw), kw


def train_from_config(cfg: "Config", out: str | os.PathLike | None,
                      device: str | torch.device = "auto", *, init_model: nn.Module | None = None,
                      meta: Mapping[str, Any] | None = None,
                      desc: str = "train") -> tuple[nn.Module, dict[str, Any]]:
    """Run the experiment of a validated config (:func:`abstain.config.validate`): load the
    training split, carve the validation split (``val_fraction``, seeded), build/initialise
    the model and :func:`fit` it into ``out``. Returns ``(model, summary)``; the summary is
    the ``"train"`` section of ``results.json``.

    This is the one training path: ``abstain train`` and every stage of ``abstain reproduce``
    call it, so every key of the config acts the same on both. ``init_model``: start from
    these weights (a stage's pre-trained model, already in memory) instead of ``[model]
    init``; ``meta``: extra entries for the checkpoint's meta.json (stage, variant);
    ``desc``: the progress bar's label."""
    from ..config import loss_params, validate  # noqa: PLC0415  cycle: config imports train

    cfg = validate(cfg)          # a Config, or the sections as plain tables

    d, tr = cfg["data"], cfg["train"]
    full = data_mod.load(d["name"], "train", root=d["root"], seed=tr["seed"])
    tr_idx, va_idx = train_val_split(len(full), d["val_fraction"], seed=tr["seed"])
    train_ds = full.subset(tr_idx)
    val_ds = full.subset(va_idx) if va_idx.numel() else None
    # The initial weights depend only on the seed (not on torch's per-process random seed or
    # on what ran before in the process): same config, same weights; a run killed before its
    # first checkpoint restarts from the same initialisation. The global RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive(tr["seed"], 0x1417))
        model, kw = build_model(cfg, full.num_classes, tuple(full.input_shape))
    if init_model is not None:
        load_state_into(model, init_model.state_dict(), source="the pre-trained model")
    base = {"arch": cfg["model"]["arch"], "num_classes": full.num_classes, "dataset": d["name"],
            "data_root": d["root"], "model_kwargs": kw, "input_shape": list(full.input_shape),
            "config": cfg.to_dict(), "val_fraction": d["val_fraction"],
            "n_train": len(train_ds), "n_val": len(val_ds) if val_ds is not None else 0,
            "loss_params": {k: v for k, v in loss_params(cfg).items() if isinstance(v, (int, float, str, bool))}}
    meta = {**base, **dict(meta or {})}
    t0 = time.perf_counter()
    model = fit(model, train_ds, cfg.train, cfg.loss, val_data=val_ds, out=out, device=device,
                augment=d["augment"], meta=meta, desc=desc)
    summary: dict[str, Any] = {"loss": tr["loss"], "epochs": tr["epochs"],
                               "seconds_this_call": time.perf_counter() - t0,
                               "n_train": len(train_ds), "n_val": meta["n_val"]}
    if out is not None:
        m = checkpoint.read_meta(out)
        summary.update({"best_epoch": m.get("epoch"), "selection": m.get("selection"),
                        **{f"val_{k}": v for k, v in m.get("metrics", {}).items()}})
    return model, summary

"""Shared pieces of the robust-training stages (fig1, digits-partition, digits-finetune):
training a variant into ``ctx.work/<variant>-s<seed>``, reading records back and
formatting table cells. Every reported number is recomputed from per-sample records."""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .. import data as data_mod
from .. import evaluation, records  # evaluation.evaluate is looked up at call time (tests spy on it)
from ..config import load_named, validate
from ..data import train_val_split
from ..records import read_records
from ..train import train_from_config

_RECORD = re.compile(r"^(?P<variant>.+)-s(?P<seed>\d+)$")


def pct(values: list[float] | float, digits: int = 1) -> str:
    """``mean ± std`` in percent (std over seeds, ddof=0), or a single value."""
    arr = np.atleast_1d(np.asarray(values, dtype=float)) * 100
    if arr.size == 1:
        return f"{arr[0]:.{digits}f}"
    return f"{arr.mean():.{digits}f} ± {arr.std():.{digits}f}"


def robust_column(cols: Mapping[str, Any], eps: float) -> np.ndarray:
    """``robust@ε`` of a records table (:meth:`abstain.records.Records.flag`)."""
    return records.as_records(cols).flag(records.ROBUST, eps)


def eps_of_columns(cols: Mapping[str, Any]) -> list[float]:
    """The radii of the ``robust@<ε>`` columns, ascending."""
    return records.as_records(cols).radii()


def partition_at(cols: Mapping[str, Any], eps: float) -> dict[str, float]:
    """Four-way partition (eq. 2, 3) of a records table at radius ``eps``
    (:meth:`abstain.records.Records.partition`)."""
    return records.as_records(cols).partition(eps)


def eri_metrics(cols: Mapping[str, Any], eps: float) -> dict[str, float]:
    """The robustness-indicator abstain model (F, S_ERI) (Section 5): S selects x when F is
    robust at x in the ε-ball; robust selection (eq. 14) needs robustness in the 2ε-ball
    (:meth:`abstain.records.Records.indicator_metrics`)."""
    return records.as_records(cols).indicator_metrics(eps)


def read_stage_records(stage_dir: Path, prefix: str = "") -> dict[str, dict[int, dict[str, np.ndarray]]]:
    """``records/<prefix><variant>-s<seed>.csv`` -> {variant: {seed: columns}}; without a
    prefix, files whose name holds ``--`` (prefixed record sets) are skipped."""
    out: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for f in sorted((Path(stage_dir) / "records").glob(f"{prefix}*.csv")):
        stem = f.stem[len(prefix):]
        if "--" in stem:
            continue
        m = _RECORD.match(stem)
        if m:
            out.setdefault(m.group("variant"), {})[int(m.group("seed"))] = read_records(f)
    return out


def study_report_start(stage_dir: Path, label: str, title: str, note: str) -> tuple[dict, dict, list[dict]]:
    """The records of a study stage (``{variant: {seed: columns}}``, and those of the strong
    attack) and the first blocks of its report: the heading and the study's note."""
    recs = read_stage_records(stage_dir)
    strong = read_stage_records(stage_dir, STRONG_PREFIX)
    blocks: list[dict] = [{"kind": "heading", "text": f"{label}: {title}"}]
    if note:
        blocks.append({"kind": "text", "text": note})
    return recs, strong, blocks


def strong_rob_inacc(strong: Mapping[str, Mapping[int, Mapping[str, Any]]], variant: str,
                     eps: float) -> str:
    """The robust inaccuracy of ``variant`` at ``eps`` under the strong attack (records
    ``strong--<variant>-s<seed>.csv``, read with ``read_stage_records(dir, STRONG_PREFIX)``),
    formatted like :func:`pct`; "–" when the stage did not run it."""
    seeds = strong.get(variant)
    if not seeds:
        return "–"
    try:
        return pct(per_seed(seeds, lambda c: partition_at(c, eps))["rob_inacc"])
    except KeyError:
        return "–"


def per_seed(records: Mapping[int, Mapping[str, Any]],
             fn: Callable[[Mapping[str, Any]], dict[str, float]]) -> dict[str, list[float]]:
    """Apply a metric function to each seed's records: {metric: [value per seed]}."""
    vals: dict[str, list[float]] = {}
    for seed in sorted(records):
        for k, v in fn(records[seed]).items():
            vals.setdefault(k, []).append(v)
    return vals


PAPER_ATTACK = "apgd-ce"      # the paper's protocol: every number compared with the paper
STRONG_ATTACK = "strong"      # the default attack, reported beside it where it is cheap
STRONG_PREFIX = "strong--"    # records of the strong attack: records/strong--<variant>-s<seed>.csv


def evaluate_records(ctx: Any, model: Any, data: Any, *, eps: list[float], config: Mapping[str, Any],
                     name: str, seed: int, double_eps: bool, prefix: str = "") -> dict[str, np.ndarray]:
    """Evaluate ``model`` on ``data`` with the stage's attack (``config["attack"]``, the paper's
    APGD-CE by default) and write ``records/<prefix><name>-s<seed>.csv``; with
    ``config["compare_attack"]`` also with that attack into ``records/strong--<prefix>…``.
    Returns the columns of the first."""
    out = None
    runs = [(config.get("attack", PAPER_ATTACK), "")]
    if config.get("compare_attack"):
        runs.append((config["compare_attack"], STRONG_PREFIX))
    for attack, tag in runs:
        res = evaluation.evaluate(model, data, eps=eps, norm=config["norm"], steps=config["eval_steps"],
                                  double_eps=double_eps, device=ctx.device, seed=seed, show_progress=False,
                                  attack=attack)
        cols = {k: v for k, v in res.items() if k != "partition"}
        ctx.write_records(f"{tag}{prefix}{name}-s{seed}", cols)
        out = cols if out is None else out
    return out


def experiments(specs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Variant -> validated config, from ``{variant: {"config": NAME, "set": {"section.key": v}}}``:
    each experiment of a stage is a TOML file of ``configs/`` (:func:`abstain.config.load_named`),
    optionally with a few keys overridden (a sweep's ε, β or γ)."""
    # plain tables: a stage's config is JSON data (hashed for caching, written to results.json);
    # train_experiment and with_overrides validate them again
    return {v: load_named(spec["config"], spec.get("set")).to_dict() for v, spec in specs.items()}


def with_overrides(cfg: Mapping[str, Any], overrides: Mapping[str, Any]) -> Any:
    """A validated config (:class:`abstain.config.Config`) with ``{"section.key": value}``
    replaced and validated again (:meth:`abstain.config.Config.with_overrides`)."""
    return validate(cfg).with_overrides(overrides)


def splits(cfg: Mapping[str, Any], seed: int) -> tuple[Any, Any, Any]:
    """(train, validation or None, test) of the config's dataset: the validation split is
    carved from the training split (``val_fraction``, seeded), never from the test set."""
    d = cfg["data"]
    full = data_mod.load(d["name"], "train", root=d["root"], seed=seed)
    tr, va = train_val_split(len(full), d["val_fraction"], seed=seed)
    val = full.subset(va) if va.numel() else None       # val_fraction = 0: no model selection
    return full.subset(tr), val, data_mod.load(d["name"], "test", root=d["root"], seed=seed)


def train_experiment(ctx: Any, name: str, seed: int, cfg: Mapping[str, Any], init_from: Any = None):
    """Train (or resume / load) the experiment ``cfg`` (a validated config) for ``seed`` into
    ``ctx.work/<name>-s<seed>`` through :func:`abstain.train.train_from_config`, the path of
    ``abstain train`` (so no key of the config is dropped): ``seed`` replaces ``[train] seed``
    (data draw, validation split, initial weights, data order); ``init_from``: a model whose
    weights replace the initial ones (a stage's pre-trained model; ``[model] init`` is then
    not read)."""
    overrides: dict[str, Any] = {"train.seed": int(seed)}
    if init_from is not None:
        # the stage's own pre-trained model ([experiment] init_from) replaces [model] init, which
        # names where `abstain train` users keep that model (e.g. ../runs/<pretrain>)
        overrides["model.init"] = None
    cfg = with_overrides(cfg, overrides)
    model, _ = train_from_config(cfg, ctx.work / f"{name}-s{seed}", ctx.device, init_model=init_from,
                                 meta={"stage": ctx.name, "variant": name, "data_seed": seed},
                                 desc=f"{name}-s{seed}")
    return model


def progress_iter(ctx: Any, items: list, desc: str):
    if getattr(ctx, "progress", None) is not None:
        return ctx.progress(items, total=len(items), desc=desc)
    return items


@contextmanager
def small_model_threads(device: Any, n: int = 1):
    """One intra-op thread on CPU while training/attacking the tiny models of these stages:
    their operations are too small to gain from threads, and on a busy machine several
    spinning OpenMP threads per process slowed them down by two orders of magnitude
    (measured: 40 s instead of 0.4 s per gauss3 epoch). The previous count is restored."""
    if torch.device(device).type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class one_thread:  # noqa: N801 - used like a decorator
    """``run_fn`` of a stage of tiny models, run under :func:`small_model_threads` (a class,
    not a closure, so that a Stage can be sent to a worker process)."""

    def __init__(self, run_fn: Callable[[Any, dict], dict]) -> None:
        self.run_fn = run_fn
        self.__doc__ = run_fn.__doc__

    def __call__(self, ctx: Any, config: dict) -> dict:
        with small_model_threads(ctx.device):
            return self.run_fn(ctx, config)

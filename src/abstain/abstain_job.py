"""The job behind ``abstain abstain``: an abstain model (F, S) and its 2-compositional model
(eq. 15) with a core model, per ε, on the test split, with the plots of Fig. 3, 4 and 6.

:func:`compose_at` computes one radius (the Python API :func:`abstain.compose` calls it for every
radius); :func:`abstain_job` adds the data, the files and the plots.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from . import records
from .errors import ConfigError
from .selectors.evaluate import KINDS
from .sources import ModelSource, check_output

SELECTORS = tuple(KINDS)          # the registry of abstain.selectors.evaluate


@dataclass
class AbstainSettings:
    """The settings of ``abstain abstain`` (see its ``--help``)."""

    selector: str
    eps: Sequence[float]
    norm: str = "linf"
    steps: int = 40
    tau: float | None = None
    tau_grid: int = 101
    samples: int | None = None
    seed: int = 0
    eval_batch_size: int = 512
    attack: str | None = None          # None: abstain.attacks.DEFAULT_ATTACK ("apgd-ce": the paper's)
    sn: dict[str, Any] = field(default_factory=lambda: {"epochs": 60, "samples": None})
    cri: dict[str, Any] | None = None      # sigma, n0, n, alpha, batch_size

    def tag(self) -> str:
        """The name of this selector's results: ``eri``, ``sr``, ``sn``, or ``cri-s<σ>`` when σ
        is given (``cri`` when it comes from the robust model's training). It keys the
        ``results.json`` section, the records and the plots, so results of several selectors
        (and σ) on one run live side by side."""
        sigma = (self.cri or {}).get("sigma") if self.selector == "cri" else None
        return f"cri-s{float(sigma):g}" if sigma is not None else self.selector

    def check(self) -> list[float]:
        from .validate import check_eps

        if self.selector not in SELECTORS:
            raise ConfigError(f"unknown selector {self.selector!r}; known: {', '.join(SELECTORS)}")
        eps_list = [check_eps(e) for e in self.eps]
        if any(e == 0 for e in eps_list):
            raise ConfigError("--eps must be > 0")
        if self.tau is not None and not 0 <= self.tau <= 1:
            raise ConfigError(f"--tau must lie in [0, 1], got {self.tau}")
        from .jobs import check_seed

        check_seed(self.seed)
        return eps_list


def compose_at(robust: nn.Module, core: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
               s: AbstainSettings, index: Any = None,
               train: tuple[torch.Tensor, torch.Tensor] | None = None) -> records.Records:
    """The abstain model (``robust``, S_selector) and its composition with ``core`` at ``eps``
    (eq. 15) on ``(x, y)`` (``index``: the samples' dataset indices, which key the attacks'
    random starts; default their positions). Returns :class:`abstain.records.Records`: the
    selector's columns, the core's (``core.pred``, ``core.robust@ε``) and the composition's
    (``h.pred@ε``, ``h.rob_acc@ε``, ``h.rob_acc_paper@ε``), with the summary ``abstain`` (the
    abstain metrics), ``core`` (its partition), ``robust`` (F alone) and ``composition`` (the
    sound ``rob_acc``, the authors' ``rob_acc_paper``, ``nat_acc``, ``coverage``).
    ``train``: the training split, for S_SN."""
    from .composition import composition_columns
    from .selectors.evaluate import abstain_records, build_selector, candidate, core_records, summarize

    index = np.arange(len(y)) if index is None else np.asarray(index)
    sel = build_selector(s.selector, robust, eps=eps, norm=s.norm, steps=s.steps, seed=s.seed,
                         tau=s.tau, train=train, sn=s.sn, cri=s.cri, attack=s.attack)
    rec = records.Records(abstain_records(sel, x, y, index, batch_size=s.eval_batch_size))
    crec = records.Records(core_records(core, x, y, index, eps=eps, norm=s.norm, steps=s.steps, seed=s.seed,
                                        batch_size=s.eval_batch_size, attack=s.attack))
    tau = getattr(sel, "tau", None)
    cand = candidate(s.selector, s.selector, rec, eps, tau)
    comp = composition_columns(rec.label, cand, crec.pred(), crec.flag(records.ROBUST, eps))
    rec = rec.join(crec, "core").with_columns({
        records.column("pred", eps, "h"): comp["h_pred"],
        records.column("rob_acc", eps, "h"): comp["h_robust_acc"],
        records.column("rob_acc_paper", eps, "h"): comp["h_robust_acc_paper"]})
    d = cand.decisions
    abst = summarize(s.selector, rec, eps, tau)
    composition = rec.composition("core", eps, selected=d.selected, robust_selected=d.robust_selected,
                                  robust_abstained=d.robust_abstained, robust=cand.robust)
    rec.summary.update({
        "abstain": abst,
        "core": rec.partition(eps, prefix="core"),
        "robust": {"nat_acc": abst["nat_acc"], "rob_acc": abst["rob_acc"]},
        "composition": {k: composition[k] for k in ("nat_acc", "rob_acc", "rob_acc_paper", "coverage")},
        "tau": tau})
    return rec


def _check_pair(robust: ModelSource, core: ModelSource) -> None:
    if core.dataset != robust.dataset:
        raise ConfigError(f"--robust uses dataset {robust.dataset!r} but --core {core.dataset!r}")
    if core.num_classes != robust.num_classes:
        raise ConfigError("--robust and --core have different numbers of classes")


def _cri_settings(robust: ModelSource, cri: dict[str, Any] | None, selector: str) -> dict[str, Any] | None:
    if selector != "cri":
        return None
    cri = dict(cri or {})
    if cri.get("sigma") is None:
        cri["sigma"] = (robust.meta.get("loss_params") or {}).get("sigma")
    if cri["sigma"] is None:
        raise ConfigError("--selector cri needs --sigma (the robust model has no loss sigma)")
    return {"num_classes": robust.num_classes, **cri, "sigma": float(cri["sigma"])}


class _Plots:
    """The points and curves of the Pareto, composition and SR-ablation plots."""

    def __init__(self) -> None:
        self.pareto_pts: dict[str, Any] = {}
        self.pareto_curves: dict[str, Any] = {}
        self.comp_pts: dict[str, Any] = {}
        self.ablation: dict[str, Any] = {}
        self.core_pt: tuple[float, float] | None = None

    def add(self, s: AbstainSettings, eps: float, cols: dict[str, Any], entry: dict[str, Any]) -> None:
        from .selectors.evaluate import tau_curve

        key, abst = records.eps_text(eps), entry["abstain"]
        if s.selector in ("sr", "sn"):
            entry["tau_curve"] = tau_curve(s.selector, cols, eps, points=s.tau_grid)
            self.pareto_curves[f"{s.selector.upper()} ε={key}"] = [
                (c["rob_sel"], c["sel_rob_acc"]) for c in entry["tau_curve"] if c["rob_sel"] > 0]
            if s.selector == "sr":
                for attack, label in (("apgd", "APGD"), ("conf", "APGDconf")):
                    c = tau_curve("sr", cols, eps, attacks=(attack,), points=s.tau_grid)
                    self.ablation[f"{label} ε={key}"] = [(d["rob_sel"], d["sel_rob_acc"]) for d in c
                                                         if d["rob_sel"] > 0]
        else:
            self.pareto_pts[f"{s.selector.upper()} ε={key}"] = (abst["rob_sel"], abst["sel_rob_acc"])
        self.comp_pts[f"composition ε={key}"] = (entry["composition"]["nat_acc"], entry["composition"]["rob_acc"])
        if self.core_pt is None:
            self.core_pt = (entry["core"]["nat_acc"], entry["core"]["rob_acc"])

    @staticmethod
    def names(s: AbstainSettings) -> list[str]:
        """The plot files of ``s`` (keyed like its results)."""
        tag = s.tag()
        return [f"abstain_pareto-{tag}.png", f"composition-{tag}.png"] + (["sr_ablation.png"] if s.selector == "sr" else [])

    def write(self, out: Path, dataset: str, s: AbstainSettings, tag: str) -> None:
        from .selectors import plots

        plots.abstain_pareto(self.pareto_pts, self.pareto_curves, out / f"abstain_pareto-{tag}.png",
                             title=f"{dataset}: abstain model (S_{s.selector.upper()})")
        plots.composition_plot(self.comp_pts, self.core_pt, out / f"composition-{tag}.png",
                               title=f"{dataset}: composition vs core (core at ε={s.eps[0]:g})")
        if self.ablation:
            plots.sr_ablation(self.ablation, out / "sr_ablation.png")


def abstain_outputs(out: Path, s: AbstainSettings) -> list:
    """What ``abstain abstain`` writes (checked and locked before any model is loaded): the
    records per ε, the plots and the ``abstain`` section of ``results.json``."""
    from .outputs import Output

    tag = s.tag()
    outs = [Output(out / "records" / f"abstain-{tag}-eps{records.eps_text(e)}.csv", "abstain")
            for e in s.check()]
    outs += [Output(out / name, "abstain") for name in _Plots.names(s)]
    return outs + [Output(out / "results.json", "results", section=f"abstain-{tag}")]


def abstain_job(robust: ModelSource, core: ModelSource, out: Path, s: AbstainSettings,
                device: Any, allow_batch_dependent: bool = False) -> dict[str, Any]:
    """Every ε of ``s``: records ``out/records/abstain-<tag>-eps<ε>.csv``, the section
    ``out/results.json["abstain-<tag>"]`` (returned) and the plots under ``out``, where
    ``<tag>`` is :meth:`AbstainSettings.tag` (the selector, and σ for S_CRI). F and the core
    whose logits depend on the batch are refused unless ``allow_batch_dependent``
    (:func:`abstain.model_checks.check_batch_independent`, as evaluate and certify)."""
    from .model_checks import check_batch_independent
    from . import data as data_mod
    from .io import update_json

    t0 = time.perf_counter()
    eps_list = s.check()
    tag = s.tag()            # before σ is filled in from the model, as abstain_outputs named it
    _check_pair(robust, core)
    s.cri = _cri_settings(robust, s.cri, s.selector)
    for m in (robust.model, core.model):
        m.to(device)
        for prm in m.parameters():
            prm.requires_grad_(False)
    test = robust.load_data("test")
    check_output(core.model, test, core.num_classes, "the --core model")
    idx = torch.arange(len(test))
    if s.samples:
        idx = data_mod.balanced_subset(test.y, s.samples, test.num_classes, seed=s.seed)
    x, y = test.x[idx].to(device), test.y[idx].to(device)
    for source, what in ((robust, "the --robust model"), (core, "the --core model")):
        check_batch_independent(source.model, x, what, allow=allow_batch_dependent)
    train = None
    if s.selector == "sn":
        tr = robust.load_data("train")
        train = (tr.x.to(device), tr.y.to(device))
    section: dict[str, Any] = {}
    figs = _Plots()
    for eps in eps_list:
        res = compose_at(robust.model, core.model, x, y, eps=eps, s=s, index=idx.numpy(), train=train)
        res.write_csv(out / "records" / f"abstain-{tag}-eps{records.eps_text(eps)}.csv")
        entry = {k: res.summary[k] for k in ("abstain", "core", "robust", "composition")}
        figs.add(s, eps, res, entry)
        section[records.eps_text(eps)] = entry
    figs.write(out, robust.dataset, s, tag)
    section["meta"] = {"robust": robust.describe, "core": core.describe, "selector": s.selector,
                       "norm": s.norm, "steps": s.steps, "seed": s.seed, "samples": int(len(idx)),
                       "attack": s.attack,
                       "seconds": time.perf_counter() - t0}
    section["meta"]["tag"] = tag
    update_json(out / "results.json", f"abstain-{tag}", section)
    return section


__all__ = ["AbstainSettings", "compose_at", "abstain_job", "abstain_outputs", "SELECTORS"]

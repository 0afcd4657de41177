"""The job behind ``abstain abstain``: an abstain model (F, S) and its 2-compositional model
(eq. 15) with a core model, per ε, on the test split, with the plots of Fig. 3, 4 and 6.

:func:`compose_at` computes one radius (the Python API :func:`abstain.compose` calls it for every
radius); :func:`abstain_job` adds the data, the files and the plots.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from . import data as data_mod
from . import distributed, records
from .chunks import ChunkStore, ChunkedJob, index_digest, job_key, model_digest
from .composition import composition_columns
from .errors import ConfigError
from .io import update_json
from .jobs import check_seed
from .model_checks import check_batch_independent
from .outputs import Output, work_dir
from .selectors.evaluate import KINDS, abstain_records, build_selector, candidate, core_records, summarize, tau_curve
from .sources import ModelSource, check_output
from .validate import check_eps

SELECTORS = tuple(KINDS)          # the registry of abstain.selectors.evaluate
# S_CRI's smoothing defaults, for `abstain abstain` and abstain.compose alike (fewer estimation
# samples than `abstain certify`'s 100,000: the selector certifies every test input at every ε)
CRI_DEFAULTS: dict[str, Any] = {"n0": 100, "n": 10_000, "alpha": 0.001, "batch_size": 1000}


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
    batch_size: int = 512
    attack: str | None = None          # None: abstain.attacks.DEFAULT_ATTACK ("apgd-ce": the paper's)
    sn: dict[str, Any] = field(default_factory=lambda: {"epochs": 60, "samples": None})
    cri: dict[str, Any] | None = None      # sigma, n0, n, alpha, batch_size
    chunk: int | None = None               # inputs per resumable chunk (None: batch_size)
    split: str = "test"

    def chunk_size(self) -> int:
        """Inputs per resumable chunk: ``chunk`` rounded up to a multiple of
        ``batch_size`` (S_CRI's noise follows those batches, so the records do not
        depend on the chunking)."""
        b = self.batch_size
        return b * max(1, -(-(self.chunk or b) // b))

    def tag(self) -> str:
        """The name of this selector's results: ``eri``, ``sr``, ``sn``, or ``cri-s<σ>`` when σ
        is given (``cri`` when it comes from the robust model's training). It keys the
        ``results.json`` section, the records and the plots, so results of several selectors
        (and σ) on one run live side by side."""
        sigma = (self.cri or {}).get("sigma") if self.selector == "cri" else None
        return f"cri-s{float(sigma):g}" if sigma is not None else self.selector

    def check(self) -> list[float]:
        if self.selector not in SELECTORS:
            raise ConfigError(f"unknown selector {self.selector!r}; known: {', '.join(SELECTORS)}")
        eps_list = [check_eps(e) for e in self.eps]
        if any(e == 0 for e in eps_list):
            raise ConfigError("--eps must be > 0")
        if self.tau is not None and not 0 <= self.tau <= 1:
            raise ConfigError(f"--tau must lie in [0, 1], got {self.tau}")
        if self.chunk is not None and self.chunk < 1:
            raise ConfigError(f"--chunk must be >= 1, got {self.chunk}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        check_seed(self.seed)
        return eps_list


def compose_columns(selector: Any, core: nn.Module, x: torch.Tensor, y: torch.Tensor, index: Any, *,
                    eps: float, s: AbstainSettings) -> dict[str, np.ndarray]:
    """The per-sample columns of one chunk of the abstain model (``selector``, built by
    :func:`abstain.selectors.evaluate.build_selector`) and of the core at ``eps``: the
    selector's columns and ``core.pred``, ``core.robust@ε``. Every random draw follows the
    samples' dataset ``index`` (S_CRI's noise follows the ``batch_size`` batches), so
    chunks of a multiple of ``batch_size`` give the columns of the whole set."""
    rec = records.Records(abstain_records(selector, x, y, index, batch_size=s.batch_size))
    crec = records.Records(core_records(core, x, y, index, eps=eps, norm=s.norm, steps=s.steps, seed=s.seed,
                                        batch_size=s.batch_size, attack=s.attack))
    return rec.join(crec, "core").columns


def compose_summary(rec: records.Records, s: AbstainSettings, eps: float, tau: float | None) -> records.Records:
    """The composition (eq. 15) from the merged columns of :func:`compose_columns`: the
    columns ``h.pred@ε``, ``h.rob_acc@ε``, ``h.rob_acc_paper@ε`` and the summary ``abstain``
    (the abstain metrics), ``core`` (its partition), ``robust`` (F alone), ``composition``
    (the sound ``rob_acc``, the authors' ``rob_acc_paper``, ``nat_acc``, ``coverage``), ``tau``."""
    cand = candidate(s.selector, s.selector, rec, eps, tau)
    comp = composition_columns(rec.label, cand, rec.pred("core"), rec.flag(records.ROBUST, eps, "core"))
    rec = rec.with_columns({
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


def selector_for(robust: nn.Module, s: AbstainSettings, eps: float,
                 train: tuple[torch.Tensor, torch.Tensor] | None = None) -> Any:
    """S_``s.selector`` of ``robust`` at ``eps`` (S_SN trained here on ``train``)."""
    return build_selector(s.selector, robust, eps=eps, norm=s.norm, steps=s.steps, seed=s.seed,
                          tau=s.tau, train=train, sn=s.sn, cri=s.cri, attack=s.attack)


def compose_at(robust: nn.Module, core: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
               s: AbstainSettings, index: Any = None,
               train: tuple[torch.Tensor, torch.Tensor] | None = None) -> records.Records:
    """The abstain model (``robust``, S_selector) and its composition with ``core`` at ``eps``
    (eq. 15) on ``(x, y)`` in one piece (``index``: the samples' dataset indices, which key the
    attacks' random starts; default their positions): :func:`compose_columns` then
    :func:`compose_summary`, as the chunks of :func:`abstain_job` are. ``train``: the
    training split, for S_SN."""
    index = np.arange(len(y)) if index is None else np.asarray(index)
    sel = selector_for(robust, s, eps, train)
    cols = compose_columns(sel, core, x, y, index, eps=eps, s=s)
    return compose_summary(records.Records(cols), s, eps, getattr(sel, "tau", None))


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
        from .selectors import plots  # noqa: PLC0415  heavy: matplotlib, figures only

        plots.abstain_pareto(self.pareto_pts, self.pareto_curves, out / f"abstain_pareto-{tag}.png",
                             title=f"{dataset}: abstain model (S_{s.selector.upper()})")
        plots.composition_plot(self.comp_pts, self.core_pt, out / f"composition-{tag}.png",
                               title=f"{dataset}: composition vs core (core at ε={s.eps[0]:g})")
        if self.ablation:
            plots.sr_ablation(self.ablation, out / "sr_ablation.png")


def abstain_outputs(out: Path, s: AbstainSettings) -> list:
    """What ``abstain abstain`` writes (checked and locked before any model is loaded): the
    records per ε, the plots and the ``abstain`` section of ``results.json``."""
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
    (:func:`abstain.model_checks.check_batch_independent`, as evaluate and certify).

    Resumable like ``abstain evaluate``: each ε is computed in chunks of
    :meth:`AbstainSettings.chunk_size` inputs (:class:`abstain.chunks.ChunkedJob`, sharded
    over torchrun ranks) kept under ``out``'s work area until the records are written, so a
    rerun after a kill skips the finished chunks (S_SN's network is trained again: its
    training is seeded, so it comes out the same)."""
    t0 = time.perf_counter()
    eps_list = s.check()
    tag = s.tag()            # before σ is filled in from the model, as abstain_outputs named it
    _check_pair(robust, core)
    s.cri = _cri_settings(robust, s.cri, s.selector)
    for m in (robust.model, core.model):
        m.to(device)
        for prm in m.parameters():
            prm.requires_grad_(False)
    test = robust.load_data(s.split)
    check_output(core.model, test, core.num_classes, "the --core model")
    idx = torch.arange(len(test))
    if s.samples:
        idx = data_mod.balanced_subset(test.y, s.samples, test.num_classes, seed=s.seed)
    probe = test.x[idx[:64]].to(device)       # the first inputs, as evaluate checks them
    for source, what in ((robust, "the --robust model"), (core, "the --core model")):
        check_batch_independent(source.model, probe, what, allow=allow_batch_dependent)
    train = None
    if s.selector == "sn":
        tr = robust.load_data("train")
        train = (tr.x.to(device), tr.y.to(device))
    section: dict[str, Any] = {}
    figs = _Plots()
    done: dict[float, records.Records] = {}
    stores = {e: _store(robust, core, idx, out, s, e, tag) for e in eps_list}    # the weights hashed once
    for eps in eps_list:
        res = _compose_chunked(robust, core, test, idx, stores[eps], s, eps, train, device)
        if res is not None:
            done[eps] = res
            entry = {k: res.summary[k] for k in ("abstain", "core", "robust", "composition")}
            figs.add(s, eps, res, entry)
            section[records.eps_text(eps)] = entry
    if not distributed.is_main():
        distributed.barrier()
        return {}
    figs.write(out, robust.dataset, s, tag)
    section["meta"] = {"robust": robust.describe, "core": core.describe, "selector": s.selector,
                       "norm": s.norm, "steps": s.steps, "seed": s.seed, "samples": int(len(idx)), "split": s.split,
                       "attack": s.attack,
                       "seconds": time.perf_counter() - t0}
    section["meta"]["tag"] = tag
    update_json(out / "results.json", f"abstain-{tag}", section)
    for e, res in done.items():     # the records last: they mark a finished job
        res.write_csv(out / "records" / f"abstain-{tag}-eps{records.eps_text(e)}.csv")
    for e in eps_list:
        stores[e].remove()
    distributed.barrier()
    return section


def _store(robust: ModelSource, core: ModelSource, idx: torch.Tensor, out: Path, s: AbstainSettings,
           eps: float, tag: str) -> Any:
    """The finished chunks of one ε under ``out``'s work area, keyed by everything the
    records depend on (both models' weights, the data and subset, the settings, ε)."""
    chunk = s.chunk_size()
    key = job_key(settings={k: v for k, v in asdict(s).items() if k not in ("chunk",)}, chunk=chunk,
                  eps=float(eps), robust=model_digest(robust.model), core=model_digest(core.model),
                  dataset=robust.dataset, data_root=robust.data_root, data_seed=robust.data_seed,
                  subset=index_digest(idx))
    return ChunkStore(work_dir(out, f"abstain-{tag}-eps{records.eps_text(eps)}-{key}"), key,
                      lambda k: idx[k * chunk:(k + 1) * chunk])


def _compose_chunked(robust: ModelSource, core: ModelSource, test: Any, idx: torch.Tensor, store: Any,
                     s: AbstainSettings, eps: float, train: Any, device: Any) -> records.Records | None:
    """One ε of the job in resumable chunks (:class:`abstain.chunks.ChunkedJob`, sharded over
    torchrun ranks): the merged records with their summary on rank 0, None elsewhere."""
    sel = selector_for(robust.model, s, eps, train)
    job = ChunkedJob(len(idx), s.chunk_size(), store=store, desc=f"abstain ε={eps:g}")

    def chunk(k: int, rows: torch.Tensor) -> dict[str, np.ndarray]:
        ids = idx[rows]
        return compose_columns(sel, core.model, test.x[ids].to(device), test.y[ids].to(device), ids.numpy(),
                               eps=eps, s=s)

    cols = job.run(chunk)
    return None if cols is None else compose_summary(records.Records(cols), s, eps, getattr(sel, "tau", None))


__all__ = ["CRI_DEFAULTS", "AbstainSettings", "compose_at", "abstain_job", "abstain_outputs", "SELECTORS"]

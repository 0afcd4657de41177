"""The τ-fronts of ``mnist1d-pareto``: softmax-response (S_SR, eq. 16) and selection-network
(S_SN) abstain models of the TRADES γ = 6 fine-tune of each pre-training seed, swept over τ and
read on Fig. 2's axes beside the fine-tune fronts (issue 23, item 1's evaluation).

For an abstain model (F, S) at threshold τ, over the whole test set (abstentions count in the
denominator as neither):

* ``rob_acc``   S selects x (S(x) as the paper defines it: S_SR, eq. 16, the max-softmax stays
  ≥ τ over B_ε(x), attacked with APGD and APGDconf, eq. 21; S_SN, the network's clean score
  ≥ τ), F is robust at ε (``robust@ε`` and no flip found by the selector's attacks) and
  accurate: the abstain model's R_rob^acc (eq. 2) on the test set;
* ``rob_inacc`` the same with F wrong: its R_rob^¬acc (eq. 3);
* ``rob_sel``   R_rob^sel (eq. 14) beside: S selects every x' of the ball (S_SR: B_2ε, S_SN:
  B_ε certified by IBP).

The same reading of S_ERI (S selects x when F is robust at ε) is F's own partition at ε, the
fine-tune points of Fig. 2, so the τ-fronts and the fine-tune fronts are on the same axes. At
τ = 0 both selectors select everything and the point is F's partition at ε: the fine-tune's
point for S_SN (the same attack, seed and random starts), never above it for S_SR (whose APGD
and APGDconf runs can find more flips); raising τ moves it towards (0, 0). The
paper compares S_SR / S_SN with S_ERI in Fig. 3 (robust selection); here they are read on the
axes where the fine-tune fronts are compared.

Records: ``records/tau-<kind>--<point>-s<seed>.csv`` (:func:`abstain.selectors.evaluate.abstain_records`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import _robust as R
from ..selectors.evaluate import abstain_records, build_selector, decisions, robust_pred

KINDS = ("sr", "sn")


def config(demo: bool) -> dict[str, Any]:
    """The point whose selectors are swept, the selectors' settings (those of
    ``mnist1d-abstain``: S_SN an MLP of 128 trained 60 epochs with IBP on 3,000 training signals;
    the demo: 64 units, 40 epochs, 600 signals) and the τ grid. The attack is the stage's
    (40-step APGD-CE, demo included), so that ``robust@ε`` of the selectors' records is that of
    the point's own evaluation (same seed, same random starts per sample)."""
    cfg: dict[str, Any] = {"point": "trades-g6", "kinds": list(KINDS), "steps": 40, "attack": "apgd-ce",
                           "sn": {"epochs": 60, "hidden": 128, "samples": 3000}, "tau_points": 20}
    if demo:
        cfg["sn"] = {"epochs": 40, "hidden": 64, "samples": 600}
    return cfg


def record_name(kind: str, point: str, seed: int) -> str:
    return f"tau-{kind}--{point}-s{seed}"


def run(ctx: Any, cfg: Mapping[str, Any], model: Any, train: Any, test: Any, *, eps: float, norm: str,
        seed: int) -> None:
    """Train / attack the selectors of ``model`` (the ``cfg["point"]`` fine-tune of ``seed``) and
    write their records on the test set (rows numbered like the stage's other records)."""
    x, y = test.x.to(ctx.device), test.y.to(ctx.device)
    index = np.arange(len(test))
    for kind in cfg["kinds"]:
        sel = build_selector(kind, model.to(ctx.device).eval(), eps=eps, norm=norm, steps=cfg["steps"], seed=seed,
                             attack=cfg["attack"], train=(train.x.to(ctx.device), train.y.to(ctx.device)),
                             sn=cfg["sn"])
        ctx.write_records(record_name(kind, cfg["point"], seed), abstain_records(sel, x, y, index))


def point_at(kind: str, records: Mapping[str, Any], eps: float, tau: float) -> dict[str, float]:
    """(``rob_sel``, ``rob_acc``, ``rob_inacc``) of the abstain model at ``tau`` (module doc),
    fractions of the test set."""
    d = decisions(kind, records, eps, tau)
    sel = np.asarray(d.selected, dtype=bool)
    rob = sel & np.asarray(robust_pred(kind, records, eps), dtype=bool)
    acc = np.asarray(records["pred"]) == np.asarray(records["label"])
    return {"rob_sel": float((np.asarray(d.robust_selected, dtype=bool) & sel).mean()),
            "rob_acc": float((rob & acc).mean()), "rob_inacc": float((rob & ~acc).mean())}


def taus(points: int) -> list[float]:
    """The τ grid: ``points`` values evenly spaced in [0, 1)."""
    return [float(t) for t in np.linspace(0.0, 1.0, int(points), endpoint=False)]


def read(stage_dir: Path) -> dict[str, dict[str, dict[int, dict[str, np.ndarray]]]]:
    """kind -> point -> seed -> records."""
    return {kind: recs for kind in KINDS if (recs := R.read_stage_records(stage_dir, f"tau-{kind}--"))}


def per_seed(stage_dir: Path, eps: float, points: int = 20) -> dict[str, dict[int, list[dict[str, float]]]]:
    """kind -> seed -> the τ-front (one point per τ of :func:`taus`), from the records."""
    out: dict[str, dict[int, list[dict[str, float]]]] = {}
    for kind, by_point in read(stage_dir).items():
        for _, by_seed in sorted(by_point.items()):
            for s, rec in sorted(by_seed.items()):
                out.setdefault(kind, {})[s] = [{"tau": t, **point_at(kind, rec, eps, t)} for t in taus(points)]
    return out


def summarize(fronts: Mapping[str, Mapping[int, list[dict[str, float]]]], seeds: list[int]) -> dict[str, list]:
    """``tau_fronts`` of results.json: kind -> per τ ``tau``, ``rob_sel``, ``rob_acc``,
    ``rob_inacc``, each the mean over ``seeds`` with ``_std`` beside (ddof 0)."""
    out: dict[str, list[dict[str, float]]] = {}
    for kind, by_seed in fronts.items():
        use = [s for s in seeds if s in by_seed] or sorted(by_seed)
        rows = []
        for i, t in enumerate(by_seed[use[0]]):
            row: dict[str, float] = {"tau": t["tau"]}
            for k in ("rob_sel", "rob_acc", "rob_inacc"):
                v = np.asarray([by_seed[s][i][k] for s in use], dtype=float)
                row[k], row[f"{k}_std"] = float(v.mean()), float(v.std())
            rows.append(row)
        out[kind] = rows
    return out


__all__ = ["KINDS", "config", "run", "point_at", "taus", "read", "per_seed", "summarize", "record_name"]

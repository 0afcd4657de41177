"""Pareto plots of abstain models and compositions (matplotlib, Agg backend, PNG).

* :func:`abstain_pareto` — Fig. 3: robust selection R_rob^sel (eq. 14) vs robust accuracy
  R_rob^acc of the robustly selected samples, for robustness-indicator abstain models
  (points) and threshold selectors swept over τ (curves).
* :func:`composition_plot` — Fig. 4: natural accuracy R_nat vs robust accuracy R_rob^acc of
  2-compositional models (and cascades) against the core model alone.
* :func:`sr_ablation` — Fig. 6: the softmax-response abstain model evaluated with APGD and
  with APGDconf (eq. 21) over τ ∈ [0, 1).

Inputs are fractions in [0, 1]; axes show percentages as in the paper.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np

from ..io import atomic_write_bytes

SEL_LABEL = r"$\mathcal{R}^{sel}_{rob}$ (robust selection) [%]"
ACC_LABEL = r"$\mathcal{R}^{acc}_{rob}$ (robust accuracy of selected) [%]"
NAT_LABEL = r"$\mathcal{R}_{nat}$ (natural accuracy) [%]"
ROB_LABEL = r"$\mathcal{R}^{acc}_{rob}$ (robust accuracy) [%]"

Point = tuple[float, float]
_MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*", "<", ">")


def _figure():
    """A figure and its axes, built without pyplot, so a user's backend (a notebook's) is
    never switched and no global figure state is kept."""
    from matplotlib.figure import Figure  # noqa: PLC0415  heavy: matplotlib, figures only

    fig = Figure(figsize=(5.6, 4.2), dpi=120)
    return fig, fig.subplots()


def _finish(fig, ax, path: str | os.PathLike, xlabel: str, ylabel: str, title: str,
            legend_loc: str) -> Path:
    """Label, grid, legend and write the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc=legend_loc)
    return _save(fig, path)


def _save(fig, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def _pct(a) -> np.ndarray:
    return 100.0 * np.asarray(a, dtype=float)


def abstain_pareto(points: Mapping[str, Point], curves: Mapping[str, Sequence[Point]],
                   path: str | os.PathLike, *, title: str = "") -> Path:
    """Fig. 3. ``points``: name -> (R_rob^sel, R_rob^acc); ``curves``: name -> list of such
    pairs (a τ sweep)."""
    fig, ax = _figure()
    for i, (name, pts) in enumerate(curves.items()):
        arr = np.asarray(pts, dtype=float).reshape(-1, 2)
        if arr.size:
            order = np.argsort(arr[:, 0])
            ax.plot(_pct(arr[order, 0]), _pct(arr[order, 1]), "-", lw=1.4, label=name, alpha=0.85)
    for i, (name, (s, a)) in enumerate(points.items()):
        ax.plot([100 * s], [100 * a], _MARKERS[i % len(_MARKERS)], ms=8, label=name, ls="none")
    return _finish(fig, ax, path, SEL_LABEL, ACC_LABEL, title or "Abstain models (Fig. 3)", "lower left")


def composition_plot(points: Mapping[str, Point], core: Point, path: str | os.PathLike, *,
                     title: str = "") -> Path:
    """Fig. 4. ``points``: name -> (R_nat, R_rob^acc) of compositions; ``core``: the core
    model alone (drawn as a star with dashed guides)."""
    fig, ax = _figure()
    ax.axvline(100 * core[0], color="grey", ls="--", lw=0.8)
    ax.axhline(100 * core[1], color="grey", ls="--", lw=0.8)
    ax.plot([100 * core[0]], [100 * core[1]], "*", color="black", ms=13, label="core alone", ls="none")
    for i, (name, (n, r)) in enumerate(points.items()):
        ax.plot([100 * n], [100 * r], _MARKERS[i % len(_MARKERS)], ms=8, label=name, ls="none")
    return _finish(fig, ax, path, NAT_LABEL, ROB_LABEL,
                   title or "2-compositional models vs the core (Fig. 4)", "best")


def sr_ablation(curves: Mapping[str, Sequence[Point]], path: str | os.PathLike, *,
                title: str = "") -> Path:
    """Fig. 6. ``curves``: label (e.g. ``"APGD ε=0.1"``) -> τ sweep of (R_rob^sel, R_rob^acc)."""
    fig, ax = _figure()
    colors: dict[str, str] = {}
    palette = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for name, pts in curves.items():
        arr = np.asarray(pts, dtype=float).reshape(-1, 2)
        if not arr.size:
            continue
        order = np.argsort(arr[:, 0])
        conf = "conf" in name
        group = name.replace("APGDconf", "").replace("APGD", "").strip()  # same setting, same colour
        color = colors.setdefault(group, palette[len(colors) % len(palette)])
        ax.plot(_pct(arr[order, 0]), _pct(arr[order, 1]), "--" if conf else "-", lw=1.5, color=color,
                label=name)
    return _finish(fig, ax, path, SEL_LABEL, ACC_LABEL,
                   title or "Softmax response: APGD vs APGDconf (Fig. 6)", "lower left")


__all__ = ["abstain_pareto", "composition_plot", "sr_ablation", "SEL_LABEL", "ACC_LABEL",
           "NAT_LABEL", "ROB_LABEL"]

"""Experiment stages of ``abstain reproduce`` (DESIGN.md, "Experiments and their results").

A stage is a module ``abstain.stages.<module>`` exposing:

``NAME: str``
    the stage name (e.g. ``"digits-finetune"``).
``DEPENDS: tuple[str, ...]``
    stages whose outputs it reads (run first; their directories are ``ctx.stage_dir(name)``).
``def config(scale: str, demo: bool) -> dict``
    the stage's full configuration (plain JSON data). The pipeline hashes it together with
    the dependencies' hashes to decide whether a cached result is still valid.
``def run(ctx: StageContext, config: dict) -> dict``
    do the work; write per-sample records with ``ctx.write_records(name, columns)`` and
    figures under ``ctx.out``; return the results mapping for ``results.json``: variant
    name -> metric dict (``nat_acc``, ``rob_acc``, …; mean over seeds, ``<m>_std`` beside),
    plus ``"meta"``. Long loops use ``ctx.progress``. Work that is expensive should be
    resumable via files under ``ctx.work`` (e.g. trained checkpoints).
``def report(stage_dir: Path) -> list[Block]``
    the stage's report section, every table number recomputed from the records under
    ``stage_dir / "records"`` (never from results.json). A Block is one of
    ``{"kind": "heading", "text": str}``, ``{"kind": "text", "text": markdown}``,
    ``{"kind": "table", "caption": str, "columns": [str], "rows": [[str|float]],
    "paper": optional [[...]] same shape or None}``,
    ``{"kind": "image", "path": path relative to stage_dir, "caption": str}``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

# stage name -> module under abstain.stages, in pipeline order
STAGES: dict[str, str] = {
    "fig1": "fig1",
    "digits-partition": "digits_partition",
    "digits-finetune": "digits_finetune",
    "digits-certify": "digits_certify",
    "digits-abstain": "digits_abstain",
    "digits-compose": "digits_compose",
}
# paper-scale stages (CIFAR-10/100, MTSD), run with --scale paper
# ("paper:<ATTR>": stage objects defined in abstain/stages/paper.py from configs/*.toml)
PAPER_STAGES: dict[str, str] = {
    "cifar10-table5": "paper:CIFAR10_TABLE5",
    "cifar10-table4": "paper:CIFAR10_TABLE4",
    "mtsd": "paper:MTSD",
}


def stage_module(name: str):
    """The stage ``name``: the module ``abstain.stages.<module>``, or for an entry written
    ``"<module>:<attr>"`` the object ``<attr>`` of that module (several stages defined in one
    module, e.g. the paper-scale stages in ``paper.py``), with the same attributes."""
    table = {**STAGES, **PAPER_STAGES}
    module, _, attr = table[name].partition(":")
    mod = importlib.import_module(f"{__name__}.{module}")
    return getattr(mod, attr) if attr else mod


@dataclass
class StageContext:
    """What a stage gets from the pipeline."""

    name: str
    out: Path                      # DIR/<stage>
    root: Path                     # DIR
    scale: str = "mini"
    demo: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    data_root: Path | None = None
    quiet: bool = False
    progress: Callable[..., Any] | None = None

    @property
    def records_dir(self) -> Path:
        return self.out / "records"

    @property
    def work(self) -> Path:
        """Scratch space kept across interruptions (checkpoints of trained models)."""
        p = self.out / "work"
        p.mkdir(parents=True, exist_ok=True)
        return p

    def stage_dir(self, name: str) -> Path:
        return self.root / name

    def write_records(self, name: str, columns: Mapping[str, Any]) -> Path:
        from ..records import write_records

        return write_records(self.records_dir / f"{name}.csv", columns)

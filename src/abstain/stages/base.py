"""What a stage of ``abstain reproduce`` is (DESIGN.md, "Experiments and their results").

A :class:`Stage` is a plain object: its name and title, the stages whose outputs it reads,
and three functions. ``config(scale, demo)`` returns the stage's full configuration (plain
JSON data; the pipeline hashes it with the dependencies' hashes to decide whether a cached
result is still valid). ``run(ctx, config)`` does the work: it writes per-sample records
with ``ctx.write_records(name, columns)`` and figures under ``ctx.out`` and returns the
mapping for ``results.json`` (variant -> metric dict as fractions, mean over seeds,
``<m>_std`` beside, plus ``"meta"``). ``report(stage_dir)`` returns the stage's report
section, every number recomputed from the records under ``stage_dir / "records"``, as a
list of blocks::

    {"kind": "heading", "text": str}
    {"kind": "text", "text": markdown}
    {"kind": "table", "caption": str, "columns": [str], "rows": [[str|float]],
     "paper": optional [[...]] of the same shape, or None}
    {"kind": "image", "path": path relative to stage_dir, "caption": str}

Expensive work is made resumable through files under ``ctx.work`` (trained checkpoints).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..records import write_records

Block = dict
ConfigFn = Callable[[str, bool], dict]
RunFn = Callable[["StageContext", dict], dict]
ReportFn = Callable[[Path], "list[Block]"]
MissingDataFn = Callable[[Mapping[str, Any], "Path | None"], "list[str]"]


@dataclass(frozen=True)
class Stage:
    """One experiment stage.

    ``scale`` is ``"mini"`` (embedded data, CPU) or ``"paper"`` (data under ``--data-root``).
    ``expected_seconds`` = (demo, full) rough wall time, used only to estimate the time left
    before the stage has run once in an output directory. ``missing_data(config, data_root)``
    (paper scale) lists each missing input with what to download; it is checked before
    anything runs.
    """

    name: str
    title: str
    config: ConfigFn
    run: RunFn
    report: ReportFn
    depends: tuple[str, ...] = ()
    scale: str = "mini"
    expected_seconds: tuple[float, float] = (60.0, 600.0)
    missing_data: MissingDataFn | None = None
    trains_large_models: bool = False     # paper-scale training: warn when run on a CPU


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
        return write_records(self.records_dir / f"{name}.csv", columns)


__all__ = ["Stage", "StageContext", "Block"]

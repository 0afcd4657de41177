"""Experiment stages of ``abstain reproduce`` (DESIGN.md, "Experiments and their results").

:data:`STAGES` is the only table of stages: :class:`~abstain.stages.base.Stage` objects in
pipeline order, the miniature ones (``scale="mini"``) first. A stage module exports
``STAGE`` (or ``STAGES``, several stages built from one definition); adding a stage means
writing such a module and adding it here (docs/architecture.md, "Adding a stage").
"""
from __future__ import annotations

from .base import Block, Stage, StageContext
from . import (digits_abstain, digits_certify, digits_compose, digits_finetune, digits_partition,
               fig1, paper, paper_records)

STAGES: list[Stage] = [
    fig1.STAGE,
    digits_partition.STAGE,
    digits_finetune.STAGE,
    digits_certify.STAGE,
    digits_abstain.STAGE,
    digits_compose.STAGE,
    *paper.STAGES,
    paper_records.STAGE,
]


def of_scale(scale: str) -> list[Stage]:
    """The stages of ``scale`` ("mini" or "paper"), in pipeline order."""
    return [s for s in STAGES if s.scale == scale]


def get(name: str) -> Stage | None:
    """The stage called ``name``, or None."""
    return next((s for s in STAGES if s.name == name), None)


__all__ = ["STAGES", "Stage", "StageContext", "Block", "of_scale", "get"]

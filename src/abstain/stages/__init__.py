"""Experiment stages of ``abstain reproduce`` (DESIGN.md, "Experiments and their results").

:data:`STAGES` is the only table of stages: :class:`~abstain.stages.base.Stage` objects in
pipeline order, the miniature ones (``scale="mini"``) first. A stage module exports
``STAGE``, ``STAGES`` (several stages built from one definition) or ``make_stage(study)``
(the four stages of a miniature study, :mod:`abstain.stages.study`); adding a stage means
writing such a module and adding it here (docs/architecture.md, "Adding a stage").
"""
from __future__ import annotations

from . import (abstain_models, compose, compose2eps, digits_certify, fig1, finetune, mnist1d_certify, paper,
               paper_records, pareto, partition, pretrain)
from .base import Block, Stage, StageContext
from .study import DIGITS, MNIST1D, Study


def study_stages(study: Study) -> list[Stage]:
    """The four stages of a miniature study, in pipeline order."""
    return [partition.make_stage(study), finetune.make_stage(study), abstain_models.make_stage(study),
            compose.make_stage(study)]


_digits = study_stages(DIGITS)
STAGES: list[Stage] = [
    fig1.STAGE,
    *_digits[:2],                 # digits-partition, digits-finetune
    digits_certify.STAGE,
    *_digits[2:],                 # digits-abstain, digits-compose
    pretrain.STAGE,               # mnist1d-pretrain (the TRADES pre-trainings the MNIST-1D stages share)
    *study_stages(MNIST1D),       # mnist1d-finetune starts from mnist1d-pretrain's seed 0
    pareto.STAGE,                 # mnist1d-pareto (needs mnist1d-partition's core)
    mnist1d_certify.STAGE,        # mnist1d-certify (fine-tunes mnist1d-pretrain's pre-trainings)
    compose2eps.STAGE,            # mnist1d-compose-2eps (the same pre-trainings, fine-tuned at 2ε)
    *paper.STAGES,
    paper_records.STAGE,
]


def of_scale(scale: str) -> list[Stage]:
    """The stages of ``scale`` ("mini" or "paper"), in pipeline order."""
    return [s for s in STAGES if s.scale == scale]


def get(name: str) -> Stage | None:
    """The stage called ``name``, or None."""
    return next((s for s in STAGES if s.name == name), None)


__all__ = ["STAGES", "Stage", "StageContext", "Block", "Study", "of_scale", "get", "study_stages"]

"""Training: the loop (:mod:`.loop`), its state on disk (:mod:`.state`), model selection on
the validation split (:mod:`.select`), the schedules (:mod:`.schedule`) and runs from a
config (:mod:`.build`)."""
from __future__ import annotations

from .build import build_model, train_from_config
from .loop import AMP_DTYPES, fit
from .schedule import MILESTONES, SCHEDULES, epoch_order, lr_at
from .select import ROBUST_SELECT, selection_score, validation_metrics
from .state import LOG_FILE, TrainingDiverged, TrainingInterrupted, is_finished, read_log

__all__ = ["fit", "train_from_config", "build_model", "lr_at", "validation_metrics", "selection_score",
           "epoch_order", "read_log", "is_finished", "TrainingInterrupted", "TrainingDiverged", "SCHEDULES", "MILESTONES",
           "ROBUST_SELECT", "AMP_DTYPES", "LOG_FILE"]

"""Published checkpoints (RobustBench, Cohen et al.) loaded into this project's models: the
file is read here (runs layer, :func:`abstain.checkpoint.load_foreign_state_dict`, never an
unrestricted unpickle); the key layouts are mapped by the pure functions of
:mod:`abstain.models.published`."""
from __future__ import annotations

import os
from typing import Sequence

import torch

from .checkpoint import load_foreign_state_dict, load_state_into
from .errors import CheckpointError
from .models.published import PUBLISHED, _num_classes_of, adapt_published_state, guess_architecture


def load_published(arch: str, path: str | os.PathLike, num_classes: int, *,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                   device: str | torch.device = "cpu", return_kwargs: bool = False):
    """Build ``arch`` and load the published checkpoint at ``path`` into it (eval mode).

    ``arch`` is one of :data:`PUBLISHED`. The model takes [0, 1] inputs; its normalisation
    is chosen as described in the module docstring. With ``return_kwargs=True`` returns
    ``(model, model_kwargs)`` where ``model_kwargs`` (``mean``, ``std``) rebuild the same
    model through ``abstain.models.create(arch, num_classes, **model_kwargs)`` (e.g. for
    ``meta.json`` when saving it as our checkpoint). A checkpoint of another architecture
    or class count fails with the missing/unexpected keys and, where one fits, the
    architecture it matches.
    """
    if arch not in PUBLISHED:
        raise CheckpointError(f"no published-checkpoint layout for {arch!r}; known: {', '.join(PUBLISHED)}")
    factory, (default_mean, default_std) = PUBLISHED[arch]
    state, norm = adapt_published_state(load_foreign_state_dict(path))
    kw = {"mean": list(mean if mean is not None else norm.get("mean", default_mean)),
          "std": list(std if std is not None else norm.get("std", default_std))}
    model = factory(num_classes, **kw)
    try:
        load_state_into(model, state, source=str(path))
    except CheckpointError as e:
        hint, k = guess_architecture(state), _num_classes_of(state)
        if hint is not None:
            raise CheckpointError(f"{path} holds a {hint!r} checkpoint with {k} classes, not {arch!r} "
                                  f"with {num_classes}; details: {e}") from None
        if k not in (None, num_classes):
            raise CheckpointError(f"{path}: its output layer has {k} classes, not {num_classes}; "
                                  f"details: {e}") from None
        raise
    model = model.to(device).eval()
    return (model, kw) if return_kwargs else model


__all__ = ["load_published"]

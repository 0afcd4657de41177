"""Small shared helpers: device choice, seeding, progress bars, eval mode, numpy views."""
from __future__ import annotations

import contextlib
import os
import random
import sys
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import AbstainError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AbstainError("--device cuda asked for, but no CUDA device is available")
    return dev


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run ``model`` in eval mode and give every submodule back its own mode on exit (also on
    error): a model whose submodules were in mixed modes (e.g. BatchNorm frozen while
    fine-tuning) comes back exactly as it was, which ``model.train(was)`` would not do."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def to_numpy(a: Any, dtype: Any = None) -> np.ndarray:
    """``a`` (tensor, array or sequence) as a numpy array on the host, cast to ``dtype`` if given."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    out = np.asarray(a)
    return out.astype(dtype) if dtype is not None else out


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
             leave: bool = False, disable: bool | None = None, **kw: Any):
    """A tqdm bar on stderr; disabled when ``ABSTAIN_QUIET=1`` or stderr is not a TTY
    (unless ``ABSTAIN_PROGRESS=1``)."""
    if disable is None:
        if os.environ.get("ABSTAIN_QUIET") == "1":
            disable = True
        elif os.environ.get("ABSTAIN_PROGRESS") == "1":
            disable = False
        else:
            disable = not sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, leave=leave, disable=disable, dynamic_ncols=True, **kw)


def fmt_seconds(s: float) -> str:
    """A duration for people: ``42s``, ``3m07s``, ``2h05m``."""
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"

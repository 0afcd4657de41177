"""Per-sample robustness evaluation of any classifier (paper Tables 1, 8, 9).

:func:`evaluate` takes any ``nn.Module`` mapping inputs in [0, 1] to logits and any
``Dataset`` or ``DataLoader`` of ``(x, y)``, streams it in batches, and returns the
per-sample record columns

``index, label, pred, robust@<ε>`` for every ε (and ``robust@<2ε>`` with ``double_eps``,
which robust selection of S_ERI needs, Section 5 / eq. 14)

plus ``"partition"``: for every ε the four-way partition of
:func:`abstain.metrics.partition` (robust-accurate eq. 2, robust-inaccurate eq. 3,
non-robust-accurate, non-robust-inaccurate, and natural accuracy).

Robustness is that of the prediction (``∀x' ∈ B^p_ε(x): F(x') = F(x)``), checked with
:func:`abstain.attacks.is_robust` (default attack :data:`abstain.attacks.DEFAULT_ATTACK`;
``attack="apgd-ce"`` is the paper's protocol). Radii are processed in increasing order and a sample
that is non-robust at ε is non-robust at every larger radius with the same adversarial
input as evidence (the balls are nested), so only the survivors are attacked again and
the flags are monotone in ε.

On CUDA the default batch is larger (:func:`default_batch_size`) and 4-D inputs and the
model run in ``channels_last`` (:func:`uses_channels_last`; the model's parameters get their
memory format back afterwards); the attacks stay in fp32.

:func:`evaluate` computes on this process only: under ``torchrun`` the chunks of a job are
shared out by :class:`abstain.chunks.ChunkedJob` (``abstain evaluate``, and
:func:`abstain.api.evaluate`). Random starts depend only on ``seed`` and the sample index,
so the records do not depend on the batch size, the chunking or the number of ranks.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from safetensors.torch import save as st_save
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from . import distributed
from .attacks import is_robust, resolve_attack
from .attacks.gradients import GradientWarning, blind_points, blind_warning
from .errors import InputError
from .io import atomic_write_bytes
from .model_checks import FiniteGuard, first_nonfinite, refuse_nonfinite
from .models import NormalizedModel
from .records import ROBUST, Records, column, eps_text
from .seeds import generator
from .utils import progress, resolve_device
from .validate import check_eps, check_inputs, check_norm


def radii(eps: float | Sequence[float], double_eps: bool = True) -> list[float]:
    """The sorted, de-duplicated list of radii evaluated: every ε and (``double_eps``) 2ε."""
    values = [eps] if isinstance(eps, (int, float)) else list(eps)
    if not values:
        raise InputError("eps: give at least one radius")
    out: dict[str, float] = {}
    for e in values:
        e = check_eps(e)
        for v in ([e, 2.0 * e] if double_eps else [e]):
            out.setdefault(eps_text(v), v)
    return sorted(out.values())


CPU_BATCH, CUDA_BATCH = 256, 1024


def default_batch_size(device: str | torch.device) -> int:
    """Inputs per evaluation batch when none is given: 256 on CPU, 1024 on CUDA, where a
    batch of 256 leaves most of the GPU idle between the attack's kernel launches."""
    return CUDA_BATCH if torch.device(device).type == "cuda" else CPU_BATCH


def uses_channels_last(dev: torch.device, x: torch.Tensor) -> bool:
    """Whether a batch runs in ``channels_last`` memory format: 4-D inputs on CUDA (cuDNN's
    NHWC kernels; the values are those of NCHW up to the kernels' rounding)."""
    return dev.type == "cuda" and x.dim() == 4


def record_columns(result: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The per-sample columns of an :func:`evaluate` result (everything but ``partition``)."""
    if isinstance(result, Records):
        return result.columns
    return {k: v for k, v in result.items() if k != "partition"}


def _batches(data: Dataset | DataLoader, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(indices, x, y)`` of ``data`` in order."""
    if isinstance(data, DataLoader):
        # A loader's order is its own: indices count samples in iteration order
        start = 0
        for batch in data:
            x, y = batch[0], batch[1]
            n = x.shape[0]
            yield torch.arange(start, start + n), x, y
            start += n
        return
    if not isinstance(data, Dataset) and not hasattr(data, "__getitem__"):
        raise InputError(f"data must be a torch Dataset or DataLoader of (x, y), got {type(data).__name__}")
    n = len(data)
    if n == 0:
        raise InputError("data is empty")
    idx = torch.arange(n)
    tensors = getattr(data, "tensors", None)
    if isinstance(tensors, tuple) and len(tensors) == 2 and all(isinstance(t, torch.Tensor) for t in tensors):
        x_all, y_all = tensors
        for s in range(0, idx.numel(), batch_size):
            i = idx[s:s + batch_size]
            yield i, x_all[i], y_all[i]
        return
    loader = DataLoader(Subset(data, idx.tolist()), batch_size=batch_size, shuffle=False)
    s = 0
    for batch in loader:
        x, y = batch[0], batch[1]
        yield idx[s:s + x.shape[0]], x, y
        s += x.shape[0]


def evaluate(model: nn.Module, data: Dataset | DataLoader, *, eps: float | Sequence[float],
             norm: str = "linf", steps: int = 40, double_eps: bool = True,
             batch_size: int | None = None, device: str | torch.device = "auto", seed: int = 0,
             normalize: tuple[Sequence[float], Sequence[float]] | None = None,
             save_adversarial: str | None = None, show_progress: bool = True,
             attack: str | None = None, index_offset: int = 0) -> Records:
    """Evaluate natural predictions and empirical robustness per sample.

    ``model``: inputs in [0, 1] -> logits (pass ``normalize=(mean, std)`` if it expects
    normalised inputs; it is then wrapped in :class:`abstain.models.NormalizedModel`).
    ``data``: a Dataset or DataLoader yielding ``(x, y)``. The model is moved to ``device``
    and attacked in eval mode (its mode is restored) by :func:`abstain.attacks.is_robust`
    with ``attack`` (default :data:`abstain.attacks.DEFAULT_ATTACK`, ``"strong"``; the
    paper's protocol is ``attack="apgd-ce"``, ``steps``-step APGD-CE aimed at the
    prediction; ``attack="ensemble"``: APGD-CE, APGD-DLR and targeted APGD).

    Returns :class:`abstain.records.Records`: per-sample columns ``index`` (position in
    ``data``), ``label``, ``pred`` and ``robust@<ε:g>`` for each radius of :func:`radii`
    (numpy arrays sorted by index), and the summary ``"partition"`` (``res["partition"]``):
    a :class:`abstain.records.RadiusDict` of partition dicts, looked up by radius
    (``res["partition"][2/255]``) or by its ``%g`` text. Only the columns grow with
    the dataset; inputs are streamed. ``batch_size``: inputs per batch, default
    :func:`default_batch_size` (256 on CPU, 1024 on CUDA); the records do not depend on it.
    ``save_adversarial``: a ``.safetensors`` path where it writes, per radius, the verified adversarial inputs of the non-robust samples
    (``adv@<ε>``, shape (M, ...)) and their indices (``index@<ε>``); kept in memory until
    written, so use it on the subsets you want to inspect. ``index_offset``: added to every
    position, for a chunk of a larger dataset (the random starts follow the index, so a
    chunked evaluation gives the records of the whole one).

    Points on which the attack's first loss has an all-zero or non-finite input gradient at
    x (:func:`abstain.attacks.gradients.blind_points`; APGD-CE on saturated softmax) are
    counted; if there are any, a :class:`abstain.attacks.gradients.GradientWarning` names
    their number and suggests the strong attack (the CLI prints it on stderr).
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be an nn.Module, got {type(model).__name__}")
    dev = distributed.local_device(resolve_device(device))
    batch_size = default_batch_size(dev) if batch_size is None else batch_size
    _check_args(norm, steps, batch_size)
    attack = resolve_attack(attack)
    eps_list = radii(eps, double_eps)
    modes = [(mod, mod.training) for mod in model.modules()]   # restored at the end
    nchw = all(p.is_contiguous() for p in model.parameters() if p.dim() == 4)   # restored at the end
    model = _prepared_model(model, normalize, dev)
    cols: dict[str, list[torch.Tensor]] = {"index": [], "label": [], "pred": []}
    cols.update({column(ROBUST, e): [] for e in eps_list})
    adv: dict[float, list[torch.Tensor]] = {e: [] for e in eps_list}
    adv_idx: dict[float, list[torch.Tensor]] = {e: [] for e in eps_list}
    total, n_blind, n_seen = None, 0, 0
    if not isinstance(data, DataLoader):
        total = (len(data) + batch_size - 1) // batch_size
    try:
        for idx, x, y in progress(_batches(data, batch_size), total=total, desc="evaluate",
                                  disable=None if show_progress else True):
            idx = idx + index_offset
            x, y, pred = _checked_batch(model, idx, x, y, dev, channels_last=True)
            n_blind += int(blind_points(model, x, pred, attack).sum())   # issue 24: named, not hidden
            n_seen += int(x.shape[0])
            flags = _robust_flags(model, x, idx.to(dev), pred, eps_list, norm=norm, steps=steps,
                                  attack=attack, seed=seed, keep_adv=save_adversarial is not None)
            for e, (robust, x_bad) in flags.items():
                cols[column(ROBUST, e)].append(robust.cpu().clone())
                if save_adversarial is not None:
                    adv[e].append(x_bad.detach().float().cpu())
                    adv_idx[e].append(idx[(~robust).cpu()])
            cols["index"].append(idx.cpu())
            cols["label"].append(y.cpu())
            cols["pred"].append(pred.cpu())
    finally:
        for mod, mode in modes:
            mod.training = mode
        if nchw and not all(p.is_contiguous() for p in model.parameters() if p.dim() == 4):
            model.to(memory_format=torch.contiguous_format)     # undo channels_last
    if not cols["index"]:
        raise InputError("data yielded no samples")
    out = _gathered(cols, eps_list)
    # points where the attack's first loss has no usable input gradient at x 
    out.summary["gradient_blind"] = {"points": int(n_blind), "of": int(n_seen), "attack": attack}
    warning = blind_warning(n_blind, n_seen, attack)
    if warning is not None:
        warnings.warn(GradientWarning(warning), stacklevel=2)
    if save_adversarial is not None:
        _save_adversarial(save_adversarial, eps_list, adv, adv_idx)
    return out


def _check_args(norm: str, steps: int, batch_size: int) -> None:
    check_norm(norm)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise InputError(f"steps must be a non-negative integer, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")


def _prepared_model(model: nn.Module, normalize: tuple[Sequence[float], Sequence[float]] | None,
                    dev: torch.device) -> nn.Module:
    """``model`` (wrapped with ``normalize``) on ``dev`` in eval mode."""
    if normalize is not None:
        try:
            mean, std = normalize
            model = NormalizedModel(model, mean, std)
        except (TypeError, ValueError) as e:
            raise InputError(f"normalize must be (mean, std) with positive std: {e}") from None
    model = model.to(dev)
    model.eval()
    return model


def _checked_batch(model: nn.Module, idx: torch.Tensor, x: Any, y: Any, dev: torch.device,
                   channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch checked and on ``dev``: ``(x, y, clean prediction)``; with ``channels_last``
    where :func:`uses_channels_last` holds, the batch and the model in that memory format."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise InputError("data must yield (x, y) tensors")
    x = x.to(dev, non_blocking=True)
    if torch.is_floating_point(x) and any(p.dtype == torch.float64 for p in model.parameters()):
        x = x.double()      # a float64 model is attacked in float64 (issue 25)
    if channels_last and uses_channels_last(dev, x):
        x = x.contiguous(memory_format=torch.channels_last)
        model.to(memory_format=torch.channels_last)      # no-op after the first batch
    if not torch.is_floating_point(x):
        raise InputError(f"inputs must be floating point in [0, 1], got {x.dtype}")
    check_inputs(x, name=f"inputs (samples {int(idx[0])}..{int(idx[-1])})")
    y = y.reshape(-1).long()
    if y.shape[0] != x.shape[0]:
        raise InputError(f"a batch has {x.shape[0]} inputs but {y.shape[0]} labels")
    with torch.no_grad():
        logits = model(x)
    if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        raise InputError(f"the model must return logits of shape (N, classes), got {tuple(logits.shape)}")
    if not bool(torch.isfinite(logits).all()):
        # argmax of NaN logits is an arbitrary class that no attack can change: every
        # such sample would count as robust
        raise InputError(f"the model returns NaN or infinite logits on samples "
                         f"{int(idx[0])}..{int(idx[-1])}; refusing to evaluate it")
    return x, y, logits.argmax(dim=1)


def _robust_flags(model: nn.Module, x: torch.Tensor, ids: torch.Tensor, pred: torch.Tensor,
                  eps_list: list[float], *, norm: str, steps: int, attack: str, seed: int,
                  keep_adv: bool) -> dict[float, tuple[torch.Tensor, torch.Tensor | None]]:
    """Per radius (increasing), the robustness flags of one batch and (``keep_adv``) the
    verified adversarial inputs of its non-robust samples. Only the samples still robust
    are attacked at the next radius (the balls are nested)."""
    robust = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    x_adv = x.clone()
    flags: dict[float, tuple[torch.Tensor, torch.Tensor | None]] = {}
    guard = FiniteGuard(model)      # NaN at any attack iterate: no verdict (issue 25)
    for e in eps_list:
        alive = torch.nonzero(robust).flatten()
        if alive.numel():
            r, a = is_robust(guard, x[alive], eps=e, norm=norm, steps=steps, attack=attack,
                             generator=generator(seed), return_adv=True,
                             sample_ids=ids[alive])
            if guard.tripped():
                refuse_nonfinite("attack point", first_nonfinite(model, a, ids[alive]), ids[alive])
            robust[alive] = r
            x_adv[alive] = torch.where(r.view((-1,) + (1,) * (x.dim() - 1)), x_adv[alive], a)
        flags[e] = (robust.clone(), x_adv[~robust] if keep_adv else None)
    return flags


def _gathered(cols: dict[str, list[torch.Tensor]], eps_list: list[float]) -> Records:
    """The columns, sorted by index, and the partition per radius."""
    local = {k: torch.cat(v).numpy() for k, v in cols.items()}
    order = np.argsort(local["index"], kind="stable")
    out: dict[str, Any] = {k: v[order] for k, v in local.items()}
    for e in eps_list:
        out[column(ROBUST, e)] = out[column(ROBUST, e)].astype(bool)
    rec = Records(out)
    rec.summary["partition"] = rec.partitions()
    return rec


def _save_adversarial(path: str, eps_list: list[float], adv: dict, adv_idx: dict) -> None:
    """Write the verified adversarial inputs, sorted by index."""
    tensors: dict[str, torch.Tensor] = {}
    for e in eps_list:
        a = torch.cat(adv[e]) if adv[e] else torch.zeros(0)
        i = torch.cat(adv_idx[e]) if adv_idx[e] else torch.zeros(0, dtype=torch.long)
        order = torch.argsort(i)
        tensors[column("adv", e)] = a[order].contiguous() if i.numel() else a
        tensors[column("index", e)] = i[order].contiguous()
    atomic_write_bytes(path, st_save(tensors))


__all__ = ["evaluate", "radii", "record_columns", "default_batch_size"]

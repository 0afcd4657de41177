"""Checkpoints: a directory with ``model.safetensors``, ``meta.json`` and ``train_state.pt``.

Weights are safetensors (no code runs when loading). ``train_state.pt`` holds only
tensors and plain containers and is read back with ``torch.load(weights_only=True)``.
Foreign ``.pt``/``.pth`` files are read with ``weights_only=True`` only, after a sniff
of their first bytes so an HTML page saved as a checkpoint gets a clear message.
"""
from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .errors import AbstainError, CheckpointError
from .io import atomic_write_bytes, atomic_write_json

MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
STATE_FILE = "train_state.pt"


def _state_dict_cpu(model: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    module = getattr(model, "module", None)
    if isinstance(module, nn.Module) and isinstance(model, nn.Module):  # DDP / DataParallel
        sd = module.state_dict()
    return {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}


def save_checkpoint(directory: str | os.PathLike, model: nn.Module, meta: Mapping[str, Any],
                    train_state: Mapping[str, Any] | None = None) -> Path:
    """Write weights, meta and (optionally) trainer state atomically into ``directory``.

    ``meta`` must hold at least ``arch`` and ``num_classes`` so the model can be rebuilt.
    The meta file is written last: its presence marks a complete checkpoint.
    """
    from safetensors.torch import save as st_save

    for key in ("arch", "num_classes"):
        if key not in meta:
            raise CheckpointError(f"checkpoint meta needs {key!r}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(d / MODEL_FILE, st_save(_state_dict_cpu(model)))
    if train_state is not None:
        buf = io.BytesIO()
        torch.save(dict(train_state), buf)
        atomic_write_bytes(d / STATE_FILE, buf.getvalue())
    atomic_write_json(d / META_FILE, dict(meta))
    return d


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"not a checkpoint directory (no {META_FILE}): {directory}")
    try:
        with open(path) as fh:
            meta = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt {path}: {e}") from None
    if not isinstance(meta, dict) or "arch" not in meta or "num_classes" not in meta:
        raise CheckpointError(f"{path} lacks 'arch' or 'num_classes'")
    return meta


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file into a CPU state dict with a clear error when corrupt."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing weights file {path}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"corrupt or truncated weights file {path}: {e}") from None


def load_state_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> nn.Module:
    """Load ``state`` strictly into ``model``; on mismatch name the missing/unexpected keys
    and shape conflicts (a checkpoint of another architecture)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:10])}{' …' if len(unexpected) > 10 else ''}")
        if shapes:
            parts.append("shape mismatch: " + ", ".join(
                f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shapes[:5]))
        raise CheckpointError(f"{source} does not fit the model ({type(model).__name__}): " + "; ".join(parts))
    model.load_state_dict(dict(state), strict=True)
    return model


def load_checkpoint(directory: str | os.PathLike, device: str | torch.device = "cpu",
                    **model_kw: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint directory and load its weights (eval mode)."""
    from . import models

    meta = read_meta(directory)
    kw = dict(meta.get("model_kwargs", {}))
    kw.update(model_kw)
    try:
        if ":" in str(meta["arch"]):   # a user's MODULE:FACTORY (abstain train --init MODULE:FACTORY)
            from .sources import build_factory_model

            model = build_factory_model(str(meta["arch"]), int(meta["num_classes"]), flag="arch")
        else:
            model = models.create(meta["arch"], int(meta["num_classes"]), **kw)
    except (AbstainError, TypeError, ValueError) as e:  # meta.json edited or corrupt
        raise CheckpointError(f"{Path(directory) / META_FILE} does not describe a model we can "
                              f"build: {e}") from None
    load_state_into(model, load_weights_file(Path(directory) / MODEL_FILE), source=str(directory))
    return model.to(device).eval(), meta


def load_train_state(directory: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        return None
    return _torch_load_safe(path)


def _sniff(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(64)
    if not head:
        return "an empty file"
    low = head.lstrip().lower()
    if low.startswith(b"<!doctype html") or low.startswith(b"<html") or b"<head" in low:
        return "an HTML page (a download page saved instead of the file?)"
    if low.startswith(b"{") or low.startswith(b"["):
        return "a JSON/text file"
    return ""


def _torch_load_safe(path: Path) -> Any:
    what = _sniff(path)
    if what:
        raise CheckpointError(f"{path} is not a checkpoint: it is {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain containers; refusing to unpickle "
            f"it (weights_only=True): {str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001 - any failure of a weights_only load means a bad file
        # (zip/EOF/Runtime/OSError for truncation; UnicodeDecode/Key/Value/IndexError for
        # corrupted bytes). weights_only never runs code, so nothing is lost by catching all.
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path} is corrupt or truncated: {type(e).__name__}: {first}") from None


def load_foreign_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a foreign checkpoint (``.pt``/``.pth``/``.safetensors``) as a flat state dict.

    Handles a plain state dict, ``{"state_dict": ...}``/``{"model": ...}``/
    ``{"model_state_dict": ...}`` nesting (RobustBench, Cohen et al.) and ``module.``
    prefixes (DataParallel). Never unpickles arbitrary objects.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint file: {path}")
    if path.suffix == ".safetensors":
        return load_weights_file(path)
    obj = _torch_load_safe(path)
    for key in ("state_dict", "model_state_dict", "model", "net"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    state = {str(k): v for k, v in obj.items()}
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state

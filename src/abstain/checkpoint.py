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
import zipfile

from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as st_save
import torch
from torch import nn

from .errors import AbstainError, CheckpointError
from .io import atomic_write_bytes, atomic_write_json
from .modelspec import ModelSpec
from .safefiles import check_regular

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

    ``meta`` must hold at least ``arch`` and ``num_classes`` so the model can be rebuilt: it
    is checked to be a :class:`abstain.modelspec.ModelSpec` that :func:`load_checkpoint` reads
    back (``arch`` a built-in or a recorded ``MODULE:FACTORY``, with ``model_kwargs``).
    The meta file is written last: its presence marks a complete checkpoint.
    """
    for key in ("arch", "num_classes"):
        if key not in meta:
            raise CheckpointError(f"checkpoint meta needs {key!r}")
    # the meta must be a model spec this project reads back (a built-in or a recorded factory)
    ModelSpec.from_meta(meta, "the checkpoint's meta", trust_code=True)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(d / MODEL_FILE, st_save(_state_dict_cpu(model)))
    if train_state is not None:
        buf = io.BytesIO()
        torch.save(dict(train_state), buf)
        atomic_write_bytes(d / STATE_FILE, buf.getvalue())
    atomic_write_json(d / META_FILE, dict(meta))
    return d


MAX_CLASSES = 100_000        # above any real label set (ImageNet-21k: 21,841); a guard against typos
MAX_META_BYTES = 16 << 20
MAX_WEIGHTS_BYTES = 64 << 30   # 64 GiB: above any classifier this project evaluates


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's ``meta.json``, with the types of the keys that rebuild the model
    checked (a hand-edited or hostile file gets one clear error, not a traceback)."""
    path = Path(directory) / META_FILE
    if not os.path.lexists(path):
        raise CheckpointError(f"not a checkpoint directory (no {META_FILE}): {directory}")
    check_regular(path, MAX_META_BYTES, "checkpoint meta", CheckpointError)   # no FIFO, device or directory
    try:
        with open(path) as fh:
            meta = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"corrupt {path}: {type(e).__name__}: {str(e)[:160]}") from None
    if not isinstance(meta, dict) or "arch" not in meta or "num_classes" not in meta:
        raise CheckpointError(f"{path} lacks 'arch' or 'num_classes'")
    _check_meta_types(meta, path)
    return meta


def _check_meta_types(meta: Mapping[str, Any], path: Path) -> None:
    def bad(key: str, want: str) -> CheckpointError:
        return CheckpointError(f"{path}: {key!r} must be {want}, got {meta.get(key)!r:.80}")

    if not isinstance(meta["arch"], str) or not meta["arch"]:
        raise bad("arch", "a model name")
    k = meta["num_classes"]
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= MAX_CLASSES:
        raise bad("num_classes", f"an integer in [2, {MAX_CLASSES}]")
    if not isinstance(meta.get("model_kwargs", {}), dict):
        raise bad("model_kwargs", "an object")
    for key in ("dataset", "data_root"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise bad(key, "a string")
    seed = meta.get("data_seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise bad("data_seed", "an integer in [0, 2**63)")
    if meta.get("config") is not None and not isinstance(meta["config"], dict):
        raise bad("config", "an object")


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file into a CPU state dict with a clear error when corrupt."""
    path = Path(path)
    check_regular(path, MAX_WEIGHTS_BYTES, "weights file", CheckpointError)
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


def load_checkpoint(directory: str | os.PathLike, device: str | torch.device = "cpu", *,
                    factory: str | None = None, trust_code: bool = False,
                    **model_kw: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint directory and load its weights (eval mode).

    The model is the :class:`abstain.modelspec.ModelSpec` of its ``meta.json``: a built-in
    architecture, or the recorded ``MODULE:FACTORY`` only when the caller names it again
    (``factory``) or passes ``trust_code``. The weights file must be a regular file, and a
    model larger than it is refused before it is allocated (:func:`_check_size_before_building`)."""
    meta = read_meta(directory)
    weights = Path(directory) / MODEL_FILE
    check_regular(weights, MAX_WEIGHTS_BYTES, "weights file", CheckpointError)   # before safe_open reads it
    spec = ModelSpec.from_meta(meta, f"{Path(directory) / META_FILE}", factory=factory, trust_code=trust_code,
                               weights=weights)

    def build() -> nn.Module:
        return spec.build(None, **model_kw)

    _check_size_before_building(build, weights)
    try:
        model = build()
    except (AbstainError, TypeError, ValueError, OverflowError, RuntimeError) as e:  # meta.json edited or corrupt
        # a built-in architecture with edited kwargs (a negative width, ...): torch raises
        # RuntimeError; a trusted factory's own errors are already one-line AbstainErrors
        raise CheckpointError(f"{Path(directory) / META_FILE} does not describe a model we can "
                              f"build: {(str(e).splitlines() or [''])[0][:200]}") from None
    load_state_into(model, load_weights_file(weights), source=str(directory))
    return model.to(device).eval(), meta


def weights_numel(path: Path) -> int | None:
    """The number of elements in a safetensors file, from its header (nothing is loaded)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            total = 0
            for key in f.keys():
                n = 1
                for d in f.get_slice(key).get_shape():
                    n *= int(d)
                total += n
            return total
    except Exception:  # noqa: BLE001 - a corrupt file is named by load_weights_file later
        return None


def _check_size_before_building(build: Any, weights: Path) -> None:
    """Build the model on the ``meta`` device (no memory) and refuse it when it holds more
    elements than the weights file: a ``num_classes`` or width edited into meta.json must
    not allocate gigabytes before the shape check."""
    expected = weights_numel(weights)
    if expected is None:
        return
    try:
        with torch.device("meta"):
            shell = build()
    except Exception:  # noqa: BLE001 - a factory that cannot build on "meta": checked after building
        return
    n = sum(t.numel() for t in list(shell.parameters()) + list(shell.buffers()))
    if n > 2 * expected + 1_000_000:
        raise CheckpointError(f"the model described by meta.json has {n:,} elements but the weights "
                              f"file {weights} holds {expected:,}: meta.json does not belong to these weights")


# what the trainer reads back from train_state.pt, by type (checked before it is used)
_STATE_TYPES: dict[str, tuple[type, ...]] = {
    "version": (int,), "signature": (dict,), "epoch": (int,), "batch": (int,), "finished": (bool,),
    "model_last": (dict,), "epoch_sums": (dict,), "epoch_n": (int,), "model_best": (dict, type(None)),
    "best_epoch": (int,), "best_score": (int, float), "best_metrics": (dict,), "optimizer": (dict,),
}


def load_train_state(directory: str | os.PathLike) -> dict[str, Any] | None:
    """A run's ``train_state.pt`` (None when absent), read with ``weights_only=True`` and
    refused, with one message, when its structure is not the trainer's."""
    path = Path(directory) / STATE_FILE
    if not os.path.lexists(path):
        return None
    check_regular(path, MAX_WEIGHTS_BYTES, "training state", CheckpointError)
    state = _torch_load_safe(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a training state")
    wrong = [k for k, types in _STATE_TYPES.items() if k in state and not isinstance(state[k], types)]
    for key in ("model_last", "model_best"):
        if isinstance(state.get(key), dict) and not all(isinstance(v, torch.Tensor) for v in state[key].values()):
            wrong.append(key)
    if wrong:
        raise CheckpointError(f"{path} is not a training state written by abstain (wrong or missing: "
                              f"{', '.join(sorted(set(wrong)))})")
    return state


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


def _check_zip_size(path: Path) -> None:
    """Refuse a ``.pt`` zip that decompresses to far more than its size: ``torch.save`` stores
    its entries uncompressed, so a large ratio is a zip bomb, refused before reading."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as z:
            total = sum(i.file_size for i in z.infolist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return   # torch.load names the corruption
    size = path.stat().st_size
    if total > 2 * size + (16 << 20):
        raise CheckpointError(f"{path} decompresses to {total:,} bytes from {size:,}: refusing to read it "
                              "(torch.save does not compress; a zip bomb?)")


def _torch_load_safe(path: Path) -> Any:
    what = _sniff(path)
    if what:
        raise CheckpointError(f"{path} is not a checkpoint: it is {what}")
    _check_zip_size(path)
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
    if not os.path.lexists(path):
        raise CheckpointError(f"no such checkpoint file: {path}")
    check_regular(path, MAX_WEIGHTS_BYTES, "checkpoint file", CheckpointError)
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

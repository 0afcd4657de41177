"""Thin helpers over ``torch.distributed`` for runs under ``torchrun``.

Nothing here invents its own engine: training uses DistributedDataParallel, and
evaluation/certification shard the sample indices across ranks and gather the
per-sample records so that every rank (and the written files) see the records of a
single-process run (exactly on CPU; on CUDA see docs/scale.md). Backends: NCCL on GPUs
(one GPU per rank), gloo on CPUs, or gloo on GPUs shared between ranks with
``ABSTAIN_DIST_BACKEND=gloo``.
"""
from __future__ import annotations

import gc
import math
import os
import re
from datetime import timedelta
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist

from .errors import AbstainError, ConfigError


BACKEND_ENV = "ABSTAIN_DIST_BACKEND"
TIMEOUT_ENV = "ABSTAIN_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
_HOST_GROUP: Any = None


class RankError(AbstainError):
    """Another rank of the process group failed, died or stopped answering during a
    collective: this rank stops with one line instead of a backend traceback."""


def timeout_seconds() -> float:
    """How long a rank waits for the others at any collective before it fails:
    ``$ABSTAIN_DIST_TIMEOUT`` seconds, default 1800 (torch's own default; a resumed certify
    may leave one rank with many more chunks than another, each rank waiting at the final
    barrier meanwhile). A rank killed outright is seen at once (its sockets close); the
    timeout bounds the wait for one that hangs."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: give the seconds a rank waits for the others "
                          "(a positive number)")
    return value


def _collective(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, a collective; a backend error (gloo's "Connection reset by
    peer" of a dead rank, "Timed out" of a silent one: RuntimeErrors) becomes a
    :class:`RankError` naming the collective and the timeout."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        cause = re.sub(r"^\[[^\]]*\]\s*", "", lines[0] if lines else type(e).__name__)
        cause = cause.split(". This is typically")[0][:160]
        raise RankError(f"rank {dist.get_rank()}/{dist.get_world_size()}: another rank failed, died or did "
                        f"not answer within {timeout_seconds():g} s ({TIMEOUT_ENV}) at {what} ({cause}); "
                        "see the other ranks' output") from None


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def backend_for(device: torch.device | str | None) -> str:
    """The process-group backend: ``$ABSTAIN_DIST_BACKEND`` (``nccl`` or ``gloo``) when set,
    else NCCL on CUDA and gloo on CPU."""
    chosen = os.environ.get(BACKEND_ENV, "").strip().lower()
    cuda = device is not None and torch.device(device).type == "cuda"
    if not chosen:
        return "nccl" if cuda else "gloo"
    if chosen not in ("nccl", "gloo") or (chosen == "nccl" and not cuda):
        raise ConfigError(f"{BACKEND_ENV}={chosen!r}: use gloo, or nccl with a CUDA device")
    return chosen


def cuda_index(backend: str) -> int:
    """The GPU of this rank on its machine: ``LOCAL_RANK`` (one GPU per rank, as NCCL needs),
    or ``LOCAL_RANK mod #GPUs`` when gloo shares the GPUs between ranks.

    Refuses with a clear message, before any CUDA call that would fail with "invalid device
    ordinal" (more ranks than GPUs) or hang in NCCL (two ranks on one GPU)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_gpus == 0:
        raise ConfigError("--device cuda under torchrun, but this machine shows no GPU "
                          "(torch.cuda.device_count() == 0); use --device cpu")
    if backend == "gloo":
        return local_rank % n_gpus
    if local_world > n_gpus or local_rank >= n_gpus:
        raise ConfigError(
            f"torchrun started {local_world} processes on this machine but it has {n_gpus} "
            f"GPU(s): NCCL needs one GPU per process. Use --nproc-per-node {n_gpus} (or set "
            f"CUDA_VISIBLE_DEVICES to more GPUs), or share the GPU(s) between the processes "
            f"through gloo with {BACKEND_ENV}=gloo (slower), or --device cpu.")
    return local_rank


def init_from_env(device: torch.device | None = None) -> bool:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1).

    Returns True when running distributed. On CUDA each rank uses the GPU of
    :func:`cuda_index` (``LOCAL_RANK``; checked against the number of GPUs first). One
    process under torchrun runs plainly, unless ``$ABSTAIN_DIST_BACKEND`` asks for a backend
    (then a process group of one, e.g. to check NCCL and DDP on a one-GPU machine)."""
    if is_distributed():
        return True
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" not in os.environ or (world <= 1 and not os.environ.get(BACKEND_ENV)):
        return False
    backend = backend_for(device)
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_device(cuda_index(backend))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_seconds()))
    return True


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: its GPU (:func:`cuda_index`) under torchrun on GPUs."""
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", cuda_index(dist.get_backend()))
    return device


def host_group() -> Any:
    """A gloo process group over all ranks for small host-side flags (None: the default
    group, already gloo). A flag all-reduced through NCCL is a GPU tensor whose value the
    host must wait for: a device sync per training step just to ask "stop now?"."""
    global _HOST_GROUP
    if dist.get_backend() == "gloo":
        return None
    if _HOST_GROUP is None:   # every rank reaches its first call at the same batch
        _HOST_GROUP = dist.new_group(backend="gloo")
    return _HOST_GROUP


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (a CPU all-reduce; no GPU sync)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    _collective("a flag all-reduce", dist.all_reduce, t, group=host_group())
    return bool(t.item() > 0)


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        _collective("a barrier", dist.barrier)


def shard_indices(n: int) -> torch.Tensor:
    """Indices ``rank, rank + world, …`` of ``range(n)`` processed by this rank."""
    return torch.arange(rank(), n, world_size())


def gather_columns(columns: Mapping[str, Any], index_key: str = "index") -> dict[str, np.ndarray]:
    """Gather per-sample record columns from all ranks, sorted by ``index_key``.

    Single process: returns the columns as arrays, sorted by index. The objects
    exchanged are our own numpy arrays between our own processes.
    """
    local = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
             for k, v in columns.items()}
    if is_distributed():
        parts: list[Any] = [None] * world_size()
        _collective("the gather of the records", dist.all_gather_object, parts, local)
        local = {k: np.concatenate([p[k] for p in parts]) for k in local}
    order = np.argsort(local[index_key], kind="stable")
    return {k: v[order] for k, v in local.items()}


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    _collective("a broadcast", dist.broadcast_object_list, box, src=src)
    return box[0]


def shutdown(synchronise: bool = True) -> None:
    """Tear the process group down before the interpreter exits.

    Without it a rank that finishes first can exit while gloo's threads in another rank are
    still live, which aborts that rank ("terminate called without an active exception") after
    the work is done. ``synchronise`` waits for every rank first (success path only: after an
    error another rank may never arrive).
    """
    global _HOST_GROUP
    if not is_distributed():
        return
    # a DistributedDataParallel wrapper left in a reference cycle (a stopped training's frames)
    # would otherwise be freed after the group is gone, and its reducer then aborts the rank
    gc.collect()
    if synchronise:
        barrier()
    _HOST_GROUP = None
    dist.destroy_process_group()

"""Thin helpers over ``torch.distributed`` for runs under ``torchrun``.

Nothing here invents its own engine: training uses DistributedDataParallel, and
evaluation/certification shard the sample indices across ranks and gather the
per-sample records so that every rank (and the written files) see exactly the
records of a single-process run. Backends: NCCL on GPUs, gloo on CPUs.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_from_env(device: torch.device | None = None) -> bool:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1).

    Returns True when running distributed. On CUDA each rank uses ``LOCAL_RANK``.
    """
    if is_distributed():
        return True
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return False
    use_cuda = device is not None and torch.device(device).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` under torchrun on GPUs."""
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


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
        dist.all_gather_object(parts, local)
        local = {k: np.concatenate([p[k] for p in parts]) for k in local}
    order = np.argsort(local[index_key], kind="stable")
    return {k: v[order] for k, v in local.items()}


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shutdown(synchronise: bool = True) -> None:
    """Tear the process group down before the interpreter exits.

    Without it a rank that finishes first can exit while gloo's threads in another rank are
    still live, which aborts that rank ("terminate called without an active exception") after
    the work is done. ``synchronise`` waits for every rank first (success path only: after an
    error another rank may never arrive).
    """
    if not is_distributed():
        return
    if synchronise:
        dist.barrier()
    dist.destroy_process_group()

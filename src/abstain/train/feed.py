"""Training batches onto the device: the whole dataset on the GPU when it fits, else pinned
double buffers; on CPU plain indexing.

Why not ``pin_memory()`` of the whole dataset and ``x_all[idx].to(device, non_blocking=True)``:
fancy-indexing a pinned tensor returns a new, pageable tensor, and a copy from pageable memory
is synchronous, so every batch waited for the GPU and was copied twice. CIFAR-10 (50,000 ×
3 × 32 × 32 float32, 614 MB) fits on any training GPU many times over: it is moved once and
batches are gathered on the device, with no host-to-device copy per step at all.
"""
from __future__ import annotations

import torch

# the dataset goes to the GPU when it needs at most this share of the free memory
GPU_RESIDENT_SHARE = 0.25


def fits_on_gpu(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> bool:
    """Whether ``x`` and ``y`` take at most :data:`GPU_RESIDENT_SHARE` of ``device``'s free memory."""
    free, _ = torch.cuda.mem_get_info(device)
    need = x.numel() * x.element_size() + y.numel() * y.element_size()
    return need <= GPU_RESIDENT_SHARE * free


class BatchFeed:
    """The batches of one epoch on ``device``: ``feed.start_epoch(order)``, then
    ``feed(start, stop, rank, world)`` = ``(x[i], y[i])`` for ``i = order[start:stop][rank::world]``.

    CPU: ``x[i]`` as it is (bitwise what the loop always did). CUDA: gathered on the GPU from a
    device-resident copy (``resident``; the epoch's order is copied to the GPU once, since even
    a small pageable copy waits for the GPU), or gathered on the host into one of two pinned
    buffers and copied asynchronously; a buffer is refilled only after its previous copy has
    finished (an event per buffer), which happened a whole step earlier, so the host does not
    wait in practice."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch: int) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.resident = self.cuda and fits_on_gpu(x, y, device)
        if self.resident:
            x, y = x.to(device), y.to(device)
        self.x, self.y = x, y
        self.order = self.order_dev = torch.zeros(0, dtype=torch.long)
        self.buffers: list[tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None]] = []
        if self.cuda and not self.resident:
            for _ in range(2):
                self.buffers.append((torch.empty((batch, *x.shape[1:]), dtype=x.dtype).pin_memory(),
                                     torch.empty((batch,), dtype=y.dtype).pin_memory(), None))
        self.turn = 0

    def start_epoch(self, order: torch.Tensor) -> None:
        self.order = order
        self.order_dev = order.to(self.device) if self.resident else order

    def __call__(self, start: int, stop: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.cuda:
            local = self.order[start:stop][rank::world]
            return self.x[local].to(self.device), self.y[local].to(self.device)
        if self.resident:
            idx = self.order_dev[start:stop][rank::world]
            return self.x.index_select(0, idx), self.y.index_select(0, idx)
        local = self.order[start:stop][rank::world]
        i, n = self.turn, local.numel()
        self.turn = 1 - self.turn
        xb, yb, done = self.buffers[i]
        if done is not None:
            done.synchronize()
        torch.index_select(self.x, 0, local, out=xb[:n])
        torch.index_select(self.y, 0, local, out=yb[:n])
        x = xb[:n].to(self.device, non_blocking=True)
        y = yb[:n].to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.buffers[i] = (xb, yb, event)
        return x, y

"""One seed derivation for the whole project: :func:`derive` and :func:`generator`.

Every random stream (data order, augmentation, the training losses' noise, attack random
starts, smoothing noise, selection-network initialisation) is a generator seeded by
``derive(seed, *tags)``: the user's ``seed`` and tags naming the stream (integers such as
epoch and batch, or short strings such as ``"sr-conf"``). ``derive(seed)`` with no tag is
the seed itself: the root stream, which the attacks that decide F's robustness use in every
command (``evaluate``, the selectors, the core model of ``abstain``), so their flags agree.

Per-sample randomness never comes from a position in a batch or a chunk: the attacks take
the dataset index of every sample (``sample_ids``) and draw each sample's random start from
``(seed, index)``, so records do not depend on the batch size, the chunking or the ranks.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch

_MASK63 = (1 << 63) - 1


def _tag(t: int | str) -> int:
    if isinstance(t, str):
        return zlib.crc32(t.encode("utf-8"))
    if isinstance(t, (bool, np.bool_)):
        return int(t)
    return int(t) & 0xFFFFFFFF


def derive(seed: int, *tags: int | str) -> int:
    """A 63-bit seed for the stream ``tags`` of ``seed`` (SeedSequence hashing: nearby tuples
    give unrelated seeds). ``derive(seed)`` is ``seed`` itself (the root stream)."""
    if not tags:
        return int(seed) & _MASK63
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF] + [_tag(t) for t in tags]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & _MASK63


def generator(seed: int, *tags: int | str, device: torch.device | str | None = None) -> torch.Generator:
    """A fresh ``torch.Generator`` (on ``device``, CPU by default) seeded with
    ``derive(seed, *tags)``: calling it twice gives the same stream."""
    g = torch.Generator(device=device) if device is not None else torch.Generator()
    return g.manual_seed(derive(seed, *tags))


__all__ = ["derive", "generator"]

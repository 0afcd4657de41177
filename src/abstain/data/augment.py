"""Batched image augmentations on tensors (kornia), in pixel space [0, 1].

``build(name, input_shape)`` returns a callable ``augment(x, generator=None) -> x`` that
maps a batch (N, C, H, W) in [0, 1] to an augmented batch of the same shape, still in
[0, 1]. Names (paper Sec. 7 "Datasets" and Table 5):

``none``         identity.
``standard``     random crop with zero padding (4 px for images of 32 px and more, else
                 H // 8) and a horizontal flip with probability 1/2: the usual CIFAR recipe.
``autoaugment``  the paper's "AA" for CIFAR-10/100: the crop and flip above, then the
                 AutoAugment CIFAR-10 policy (Cubuk et al. 2018, kornia's
                 ``AutoAugment("cifar10")``), with a sub-policy drawn *per image* as in the
                 original (kornia alone draws one sub-policy per call, i.e. per batch).
                 Needs RGB images.
``mtsd``         the paper's standard augmentation "SA" for the traffic signs (MTSD): random
                 crop (padding 4), colour jitter (brightness, contrast, saturation, hue 0.1)
                 and a random affine map with rotation up to 15 degrees and translation up
                 to 10% (always applied), as in the authors' code. No flip: mirroring turns
                 e.g. "keep left" into "keep right".

Determinism: kornia draws its random parameters from torch's global RNG and takes no
generator. When a ``generator`` is passed, one seed is drawn from it and the
augmentation runs inside ``torch.random.fork_rng`` seeded with it, so the result is a
function of the generator state alone and the global RNG is left untouched. Without a
generator the global RNG is used.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError, InputError

AUGMENTS = ("none", "standard", "autoaugment", "mtsd")
Augment = Callable[..., torch.Tensor]


def _padding(h: int) -> int:
    return 4 if h >= 32 else max(1, h // 8)


class BatchAugment:
    """Applies ``fn`` to batches of shape (N, *input_shape), optionally under a generator."""

    def __init__(self, name: str, input_shape: Sequence[int], fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.name = name
        self.input_shape = tuple(int(s) for s in input_shape)
        self.fn = fn

    def __repr__(self) -> str:
        return f"BatchAugment({self.name!r}, input_shape={self.input_shape})"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dim() != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise InputError(f"augmentation {self.name!r} built for inputs {self.input_shape}, "
                             f"got a batch of shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            return x
        if generator is None:
            return self._run(x)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
        cuda = x.device.type == "cuda"
        with torch.random.fork_rng(devices=[x.device] if cuda else []):
            torch.random.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(x.device):
                    torch.cuda.manual_seed(seed)
            return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.fn(x).clamp_(0.0, 1.0)


def _kornia_augmentation(name: str):
    """``kornia.augmentation``, or a ConfigError saying that augmentation ``name`` needs kornia."""
    try:
        import kornia.augmentation as K  # noqa: PLC0415  heavy: kornia, augmentation only
    except ImportError as e:
        raise ConfigError(
            f"augment = {name!r} needs kornia, which this Python cannot import ({e}). kornia is a "
            "dependency of abstain: `pip install 'kornia>=0.7'` (it brings kornia-rs); on a machine "
            "without a package registry install its wheels (tools/gpu_check.sh --wheels DIR shows "
            "how), or train with augment = \"none\"") from None
    return K


def _crop_flip(h: int, w: int, flip: bool) -> nn.Module:
    import kornia.augmentation as K  # noqa: PLC0415  heavy: kornia, augmentation only

    mods: list[nn.Module] = [K.RandomCrop((h, w), padding=_padding(h), fill=0.0)]
    if flip:
        mods.append(K.RandomHorizontalFlip(p=0.5))
    return nn.Sequential(*mods)


class _PerImagePolicy:
    """AutoAugment with one sub-policy drawn per image (kornia draws one per call)."""

    def __init__(self, policy: str = "cifar10") -> None:
        from kornia.augmentation.auto import AutoAugment  # noqa: PLC0415  heavy: kornia, augmentation only

        self.subpolicies = list(AutoAugment(policy).children())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # Group the images by sub-policy on the host and move ONE permutation to the device
        # (an index copy per sub-policy was up to 25 blocking copies per batch); the groups are
        # processed in the same order with the same members as before, so the random draws
        # and the result are unchanged.
        choice = torch.randint(len(self.subpolicies), (x.shape[0],))
        perm = torch.argsort(choice, stable=True)
        counts = torch.bincount(choice, minlength=len(self.subpolicies)).tolist()
        perm_dev = perm.to(x.device)
        parts = []
        for i, group in zip(range(len(counts)), x.index_select(0, perm_dev).split(counts)):
            if counts[i]:
                parts.append(self.subpolicies[i](group).to(x.dtype))
        out = torch.empty_like(x)
        out[perm_dev] = torch.cat(parts)
        return out


def build(name: str, input_shape: Sequence[int]) -> BatchAugment:
    """The augmentation ``name`` (one of :data:`AUGMENTS`) for inputs of ``input_shape`` (C, H, W)."""
    if name not in AUGMENTS:
        raise ConfigError(f"unknown augmentation {name!r}; known: {', '.join(AUGMENTS)}")
    shape = tuple(int(s) for s in input_shape)
    if name == "none":
        return BatchAugment(name, shape, lambda x: x)
    _kornia_augmentation(name)   # a clear error where kornia is missing, before any use
    if len(shape) != 3:
        raise ConfigError(f"augmentation {name!r} needs images (C, H, W), got inputs of shape {shape}")
    c, h, w = shape
    if name == "standard":
        return BatchAugment(name, shape, _crop_flip(h, w, flip=True))
    if c != 3:
        raise ConfigError(f"augmentation {name!r} needs RGB images (3, H, W), got {shape}")
    if name == "autoaugment":
        crop_flip, policy = _crop_flip(h, w, flip=True), _PerImagePolicy("cifar10")
        return BatchAugment(name, shape, lambda x: policy(crop_flip(x)))
    import kornia.augmentation as K  # noqa: PLC0415  heavy: kornia, augmentation only (name == "mtsd")

    sa = nn.Sequential(
        K.RandomCrop((h, w), padding=_padding(h), fill=0.0),
        K.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1, p=1.0),
        K.RandomAffine(degrees=15.0, translate=(0.1, 0.1), p=1.0),
    )
    return BatchAugment(name, shape, sa)

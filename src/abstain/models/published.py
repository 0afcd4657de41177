"""Load published robust checkpoints (RobustBench model zoo, Cohen et al.) into our models.

Nothing is downloaded here: users fetch the files themselves (see ``docs/data-models.md``)
and pass the path to :func:`abstain.foreign.load_published`, which reads it with :func:`abstain.checkpoint.load_foreign_state_dict`
(``torch.load(weights_only=True)`` after a sniff for HTML pages; ``{"state_dict": ...}``
nesting and ``module.`` prefixes removed), then the publisher's key layout is mapped onto
ours by :func:`adapt_published_state`:

* Cohen et al. save ``nn.Sequential(NormalizeLayer, resnet)``: keys start with ``1.``,
  which is removed (their NormalizeLayer keeps its statistics outside the state dict).
* RobustBench's ``WideResNet(..., sub_block1=True)`` (Carmon2019Unlabeled, Zhang2019
  Theoretically, ...) holds a ``sub_block1`` that ``forward`` never uses: dropped.
* RobustBench models that normalise inside keep ``mu``/``sigma`` buffers of shape
  (1, 3, 1, 1) (Engstrom2019Robustness, Rice2020Overfitting, ...), DeepMind's WideResNets
  (``dm-wrn-28-10``: Gowal2020Uncovering_28_10_extra, Rebuffi2021Fixing_28_10_cutmix_ddpm)
  ``mean``/``std`` buffers of shape (3, 1, 1): they become the mean/std of our first
  :class:`~abstain.models.normalize.Normalize` layer.

Without ``mu``/``sigma`` the normalisation is what the publisher's model applies: none for
RobustBench's WideResNets and ResNet-18/50 (they take raw [0, 1] inputs), Cohen et al.'s
CIFAR-10 statistics for ``resnet110``. Explicit ``mean``/``std`` arguments override both.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .resnet import COHEN_CIFAR10_MEAN, COHEN_CIFAR10_STD, resnet18, resnet50, resnet110
from .wideresnet import dm_wrn_28_10, wrn_28_10, wrn_34_10, wrn_40_10

# arch -> (factory, default (mean, std) of the publisher's checkpoints)
_IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
PUBLISHED: dict[str, tuple[Callable[..., nn.Module], tuple[Sequence[float], Sequence[float]]]] = {
    "resnet18": (resnet18, _IDENTITY),
    "resnet50": (resnet50, _IDENTITY),
    "resnet110": (resnet110, (COHEN_CIFAR10_MEAN, COHEN_CIFAR10_STD)),
    "wrn-28-10": (wrn_28_10, _IDENTITY),
    "wrn-34-10": (wrn_34_10, _IDENTITY),
    "wrn-40-10": (wrn_40_10, _IDENTITY),
    "dm-wrn-28-10": (dm_wrn_28_10, ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))),
}
# the output layer of each family, used to read the number of classes off a checkpoint
_HEADS = ("fc.weight", "linear.weight", "logits.weight")


def adapt_published_state(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Map a publisher's flat state dict onto our key layout.

    Returns ``(state, normalisation)`` where ``normalisation`` is ``{"mean": ..., "std": ...}``
    when the checkpoint carried RobustBench ``mu``/``sigma`` buffers, else ``{}``.
    """
    out = dict(state)
    if out and all(k.startswith("1.") for k in out):  # Cohen et al.: Sequential(normalize, model)
        out = {k[2:]: v for k, v in out.items()}
    out = {k: v for k, v in out.items() if not k.startswith("sub_block1.")}
    norm: dict[str, Any] = {}
    for m_key, s_key in (("mu", "sigma"), ("mean", "std")):  # RobustBench / DeepMind buffers
        if m_key in out and s_key in out:
            mu, sigma = out.pop(m_key), out.pop(s_key)
            norm = {"mean": [float(v) for v in mu.flatten()], "std": [float(v) for v in sigma.flatten()]}
    return out, norm


def _num_classes_of(state: Mapping[str, torch.Tensor]) -> int | None:
    for key in _HEADS:
        if key in state and state[key].dim() == 2:
            return int(state[key].shape[0])
    return None


def guess_architecture(state: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the known architecture whose keys and shapes match ``state`` exactly, if any.

    Models are built on the ``meta`` device, so no memory is allocated."""
    k = _num_classes_of(state)
    if k is None:
        return None
    for name, (factory, _) in PUBLISHED.items():
        with torch.device("meta"):
            own = factory(k).state_dict()
        if set(own) == set(state) and all(tuple(own[n].shape) == tuple(state[n].shape) for n in own):
            return name
    return None



"""One model spec: what builds a model, below :mod:`abstain.checkpoint` (issue 25, item 2).

A :class:`ModelSpec` is a built-in architecture (a name of :data:`abstain.models.MODELS`)
with its kwargs, or a user's ``MODULE:FACTORY``, plus the number of classes, the weights
file and the normalisation; ``.build(device)`` makes the module. A run directory is
untrusted input, so a spec read from its ``meta.json`` (:meth:`ModelSpec.from_meta`) never
names importable code: an ``arch`` that is not a built-in name is refused, and a factory run
(``abstain train --init MODULE:FACTORY`` records ``"arch": "MODULE:FACTORY"``) loads back
only when the user names the same factory again (``--model MODULE:FACTORY``) or passes
``--trust-code``. Nothing is imported before that decision.
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from . import models
from .errors import CheckpointError, ConfigError
from .models import MODELS


def import_factory(spec: str, flag: str = "--model") -> Callable[..., Any]:
    """The callable named by ``package.module:factory``."""
    if ":" not in spec:
        raise ConfigError(f"{flag} must be 'package.module:factory' or a run directory, got {spec!r}")
    mod_name, attr = spec.split(":", 1)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"{flag}: cannot import module {mod_name!r}: {e}") from None
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's module failed while importing
        raise ConfigError(f"{flag}: importing module {mod_name!r} failed: {type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0][:200]}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ConfigError(f"{flag}: module {mod_name!r} has no callable {attr!r}")
    return factory


def build_factory(spec: str, num_classes: int, flag: str = "--model") -> nn.Module:
    """``FACTORY(num_classes=K)`` (or ``FACTORY()``) with its fresh weights; every failure
    of the user's code is one :class:`abstain.errors.ConfigError` naming ``flag``."""
    factory = import_factory(spec, flag)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    needed = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n != "num_classes"
              and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if needed:
        raise ConfigError(f"{flag}: {spec} needs the arguments {', '.join(needed)}; give it a factory "
                          "that takes none (or only num_classes)")
    try:
        model = factory(num_classes=num_classes) if "num_classes" in params else factory()
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's factory failed
        raise ConfigError(f"{flag}: {spec}() raised {type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0][:200]}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{flag}: {spec} returned {type(model).__name__}, not a torch nn.Module")
    return model


def builtin_names() -> tuple[str, ...]:
    """The built-in architectures (:data:`abstain.models.MODELS`)."""
    return tuple(MODELS)


@dataclass(frozen=True)
class ModelSpec:
    """A buildable model: ``arch`` (built-in name) with ``kwargs``, or ``factory``
    (``MODULE:FACTORY``); ``num_classes``; ``weights`` (a file, loaded by the caller) and
    ``normalize`` (mean, std) as recorded."""

    num_classes: int
    arch: str | None = None
    factory: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    normalize: tuple[list[float], list[float]] | None = None

    def __post_init__(self) -> None:
        if (self.arch is None) == (self.factory is None):
            raise CheckpointError("a model spec names either a built-in architecture or a factory")
        if self.arch is not None and self.arch not in builtin_names():
            raise CheckpointError(f"unknown architecture {self.arch!r:.80}; known: {', '.join(builtin_names())}")

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], where: str, *, factory: str | None = None,
                  trust_code: bool = False, weights: Path | None = None) -> "ModelSpec":
        """The spec a checkpoint's ``meta.json`` describes (``where`` names it in errors).
        ``factory``: the ``MODULE:FACTORY`` the user named for this run (it must be the one
        recorded); ``trust_code``: import the recorded factory without naming it."""
        arch = str(meta["arch"])
        k = int(meta["num_classes"])
        kw = dict(meta.get("model_kwargs", {}) or {})
        if ":" not in arch:
            if factory is not None:
                raise CheckpointError(f"{where} holds the built-in {arch!r}, not the factory {factory}; drop --model")
            if arch not in builtin_names():
                raise CheckpointError(f"{where}: 'arch' {arch!r:.80} is not a built-in architecture "
                                      f"({', '.join(builtin_names())}); a run directory never names code to import")
            return cls(num_classes=k, arch=arch, kwargs=kw, weights=weights)
        if factory is None and not trust_code:
            raise CheckpointError(f"{where} was made from the factory {arch!r:.120}; a run directory never runs "
                                  f"code on its own: name it again with --model {arch:.120}, or pass --trust-code")
        if factory is not None and factory != arch:
            raise CheckpointError(f"{where} was made from the factory {arch!r:.120}, not {factory!r:.120}")
        if kw:
            raise CheckpointError(f"{where}: a factory model takes no model_kwargs")
        return cls(num_classes=k, factory=arch, weights=weights)

    def build(self, device: str | torch.device | None = None, **overrides: Any) -> nn.Module:
        """The module (fresh weights), moved to ``device`` when given (else built on the
        current default device, e.g. ``meta`` for the size guard); ``overrides`` update a
        built-in's kwargs."""
        if self.factory is not None:
            model = build_factory(self.factory, self.num_classes, flag="--model")
        else:
            model = models.create(self.arch, self.num_classes, **{**dict(self.kwargs), **overrides})
        return model if device is None else model.to(device)

    @property
    def describe(self) -> dict[str, Any]:
        return {"arch": self.arch} if self.arch is not None else {"factory": self.factory}


__all__ = ["ModelSpec", "builtin_names", "import_factory", "build_factory"]

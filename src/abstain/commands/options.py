"""Options shared by the commands: one name and one meaning for a setting everywhere, the
defaults read from the settings dataclasses (:mod:`abstain.jobs`, :mod:`abstain.abstain_job`),
and old option names kept as deprecated aliases for one release.

==========================  ===================================================================
``--batch-size N``          inputs per forward/attack batch (evaluate, abstain)
``--noise-batch-size N``    noise samples per forward pass of the smoothed classifier
                            (certify, abstain --selector cri)
``--samples N``             a seeded, class-balanced subset of N inputs of ``--split``
``--split``                 the dataset split evaluated (``test``, or ``train``)
``--chunk N``               inputs per resumable chunk
==========================  ===================================================================

Renamed (the old name still works for a release and prints a notice): ``abstain abstain
--eval-batch-size`` is ``--batch-size``; ``abstain certify --batch-size`` is
``--noise-batch-size``; ``abstain evaluate --ensemble`` is ``--attack ensemble``. ``abstain abstain --batch-size`` (noise samples of S_CRI before) now
means inputs per batch, as in ``evaluate``: S_CRI's is ``--noise-batch-size``.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any


def default(settings: type, name: str) -> Any:
    """The default of field ``name`` of the settings dataclass ``settings``: the one place a
    command's default is written."""
    for f in dataclasses.fields(settings):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise KeyError(f"{settings.__name__}.{name} has no default")
    raise KeyError(f"{settings.__name__} has no field {name!r}")


class DeprecatedAlias(argparse.Action):
    """An old option name: stores into the new option's ``dest`` and prints a notice."""

    def __init__(self, option_strings: list[str], dest: str, *, new: str, **kw: Any) -> None:
        self.new = new
        kw.setdefault("help", f"deprecated: use {new}")
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"notice: {option_string} is deprecated and will be removed; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_split(g: Any, what: str = "evaluate") -> None:
    g.add_argument("--split", default="test", choices=("test", "train"),
                   help=f"the dataset split to {what}")


__all__ = ["default", "DeprecatedAlias", "add_split"]

"""Which model, which data: the one place every command gets its model from.

A model comes from

* a run directory (``--run DIR``, or ``--robust DIR`` / ``--core DIR`` / ``train --init DIR``):
  the checkpoint written by ``abstain train`` or a stage; its ``meta.json`` names the
  architecture, the dataset and the data seed; or
* your own code (``--model MODULE:FACTORY [--weights FILE]``): ``FACTORY(num_classes=K)``
  when the factory takes ``num_classes``, else ``FACTORY()``, from an importable module
  (the current directory is on the path); weights from ``.safetensors`` or a ``.pt``/``.pth``
  read with ``torch.load(weights_only=True)`` (published layouts are mapped), never
  unpickled; the dataset from ``--data NAME [--data-root DIR]``.

``--normalize MEAN... STD...`` wraps a model that expects normalised inputs, so every ε stays
in pixel space. The result is a :class:`ModelSource`: the model (eval mode), its number of
classes, the dataset it belongs to and a description for ``results.json``.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from . import data as data_mod
from .checkpoint import load_checkpoint, load_foreign_state_dict, load_state_into
from .errors import CheckpointError, ConfigError
from .models import NormalizedModel
from .modelspec import build_factory, import_factory

DATA_HELP = "gauss3, digits, mnist1d, cifar10, cifar100, folder, mtsd"


@dataclass
class ModelSource:
    """A model and the data it belongs to."""

    model: nn.Module
    num_classes: int
    dataset: str
    data_root: str | None = None
    data_seed: int = 0
    run_dir: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    describe: dict[str, Any] = field(default_factory=dict)

    def load_data(self, split: str = "test"):
        """The ``split`` of the model's dataset (seeded as the model was trained), after a
        check that the model gives finite logits, one per class of it (:func:`check_output`)."""
        ds = data_mod.load(self.dataset, split, root=self.data_root, seed=self.data_seed)
        what = f"the model {self.describe.get('run') or self.describe.get('model') or ''}".rstrip()
        check_output(self.model, ds, self.num_classes, what)
        return ds


def build_factory_model(spec: str, num_classes: int, weights: str | None = None,
                        flag: str = "--model") -> nn.Module:
    """``FACTORY(num_classes=K)`` (or ``FACTORY()``, :func:`abstain.modelspec.build_factory`)
    with ``weights`` loaded safely."""
    model = build_factory(spec, num_classes, flag)
    if weights:
        load_state_into(model, load_foreign_state_dict(weights), source=weights)
    return model


def parse_normalize(values: Sequence[float] | None) -> tuple[list[float], list[float]] | None:
    """``MEAN... STD...`` (as many of each) -> (mean, std)."""
    if values is None:
        return None
    if len(values) % 2 or not values:
        raise ConfigError(f"--normalize takes MEAN... STD... (as many of each), got {len(values)} values")
    half = len(values) // 2
    mean, std = list(values[:half]), list(values[half:])
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"--normalize: values must be finite numbers, got {list(values)}")
    if any(not s > 0 for s in std):
        raise ConfigError(f"--normalize: std values must be positive, got {std}")
    return mean, std


def check_finite_weights(model: nn.Module, what: str) -> None:
    """Refuse a model with a NaN or infinite parameter or buffer: its logits (and so every
    robustness verdict computed from them) would be meaningless."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if torch.is_floating_point(t) and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{what}: the weight {name!r} holds NaN or infinite values; "
                                  "such a model cannot be evaluated (a diverged training?)")


def check_output(model: nn.Module, data: Any, num_classes: int, what: str) -> None:
    """One forward pass on the first inputs of ``data``: the model must return finite logits
    with one column per class of the dataset (a 3-logit model on a 10-class dataset is
    refused here, not evaluated into nonsense)."""
    k_data = int(getattr(data, "num_classes", num_classes))
    if num_classes != k_data:
        raise ConfigError(f"{what} has {num_classes} classes but the dataset has {k_data}")
    x = data.x[:2]
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            logits = model(x.to(dev))
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        raise ConfigError(f"{what} fails on inputs of shape {tuple(x.shape[1:])} of the dataset: "
                          f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}") from None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(f"{what} must return logits of shape (N, {k_data}), got {shape}")
    if logits.shape[1] != k_data:
        raise ConfigError(f"{what} returns {logits.shape[1]} logits but the dataset has {k_data} classes")
    if logits.dtype != torch.float32 and logits.dtype != torch.float64:
        raise ConfigError(f"{what} returns {logits.dtype} logits; use a float32 model "
                          "(inputs are float32 in [0, 1])")
    if not bool(torch.isfinite(logits).all()):
        raise ConfigError(f"{what} returns NaN or infinite logits on the dataset's first inputs")


def _normalized(model: nn.Module, normalize: tuple[list[float], list[float]] | None) -> nn.Module:
    check_finite_weights(model, "the model")
    if normalize is None:
        return model
    return NormalizedModel(model, *normalize)


def is_run_dir(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / "meta.json").is_file()


def from_run(run_dir: str | os.PathLike, device: Any = "cpu",
             normalize: tuple[list[float], list[float]] | None = None, *, factory: str | None = None,
             trust_code: bool = False) -> ModelSource:
    """The model of a run directory and the dataset named in its ``meta.json``. A run made
    from ``MODULE:FACTORY`` loads only with that ``factory`` named again or ``trust_code``
    (:meth:`abstain.modelspec.ModelSpec.from_meta`): a run directory never runs code."""
    run_dir = Path(run_dir)
    model, meta = load_checkpoint(run_dir, device=device, factory=factory, trust_code=trust_code)
    if not meta.get("dataset"):
        raise ConfigError(f"{run_dir}/meta.json names no dataset")
    # the split the run was trained with: datasets drawn from a seed (gauss3) use the
    # training seed for both splits
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    train_cfg = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    data_seed = meta.get("data_seed", train_cfg.get("seed", 0))
    if isinstance(data_seed, bool) or not isinstance(data_seed, int) or not 0 <= data_seed < 2**63:
        raise CheckpointError(f"{run_dir}/meta.json: the data seed must be an integer in [0, 2**63), "
                              f"got {data_seed!r:.60}")
    return ModelSource(_normalized(model, normalize).eval(), int(meta["num_classes"]), meta["dataset"],
                       meta.get("data_root"), data_seed, run_dir, meta,
                       {"run": str(run_dir), "arch": meta.get("arch")})


def weights_flag(flag: str) -> str:
    """The weights option that goes with a model option: ``--weights`` for ``--model``,
    ``--robust-weights`` for ``--robust``, ``--core-weights`` for ``--core``."""
    return "--weights" if flag == "--model" else f"{flag}-weights"


def from_factory(spec: str, weights: str | None, *, data: str, data_root: str | None = None,
                 num_classes: int | None = None,
                 normalize: tuple[list[float], list[float]] | None = None,
                 flag: str = "--model", random_init: bool = False) -> ModelSource:
    """Your model (``MODULE:FACTORY`` + weights) on the dataset ``data``. Without weights the
    model is refused unless ``random_init`` (its random initialisation is then evaluated, on
    purpose, and ``results.json`` says so)."""
    import_factory(spec, flag)        # an unimportable module is named first
    if weights is None and not random_init:
        raise ConfigError(f"{flag} {spec} has no weights: give {weights_flag(flag)} FILE, or --random-init "
                          "to use the factory's random initialisation on purpose")

    test = data_mod.load(data, "test", root=data_root, seed=0)
    k = num_classes if num_classes is not None else int(getattr(test, "num_classes", 0))
    if k < 2:
        raise ConfigError(f"--num-classes must be >= 2, got {k}")
    model = build_factory_model(spec, k, weights, flag)
    describe = {"model": spec, "weights": weights, **({"random_init": True} if weights is None else {})}
    return ModelSource(_normalized(model, normalize).eval(), k, data, data_root, 0, None, {}, describe)


def resolve(spec: str, weights: str | None = None, *, data: str | None = None,
            data_root: str | None = None, num_classes: int | None = None,
            normalize: tuple[list[float], list[float]] | None = None, device: Any = "cpu",
            flag: str = "--model", random_init: bool = False, trust_code: bool = False) -> ModelSource:
    """A run directory or ``MODULE:FACTORY`` (which then needs ``data``)."""
    if is_run_dir(spec):
        if weights is not None:
            raise ConfigError(f"{flag} {spec} is a run directory; its weights come with it "
                              f"(drop {flag}-weights)")
        return from_run(spec, device, normalize, trust_code=trust_code)
    if ":" not in spec:
        raise ConfigError(f"{flag} {spec}: no run directory there (no meta.json), and not "
                          "'package.module:factory'")
    if data is None:
        raise ConfigError(f"{flag} {spec} needs --data NAME ({DATA_HELP})")
    return from_factory(spec, weights, data=data, data_root=data_root, num_classes=num_classes,
                        normalize=normalize, flag=flag, random_init=random_init)


# --------------------------------------------------------------------------- arguments
def add_arguments(p: argparse.ArgumentParser, *, out_help: str) -> None:
    """The model-source options of ``evaluate`` and ``certify``."""
    g = p.add_argument_group("what to use (either --run, or --model with --data and --out)")
    g.add_argument("--run", metavar="DIR", help="run directory (checkpoint) written by `abstain train`")
    g.add_argument("--model", metavar="MODULE:FACTORY",
                   help="your model: a factory in an importable module (the current directory is on the path)")
    g.add_argument("--weights", metavar="FILE", help="weights for --model (.safetensors, .pt or .pth)")
    add_data_arguments(g)
    add_trust_arguments(g)
    g.add_argument("--out", metavar="DIR", help=out_help)


def add_trust_arguments(g: Any, batch: bool = True) -> None:
    """Options that accept, on purpose, what is refused by default (issue 25)."""
    g.add_argument("--random-init", action="store_true",
                   help="use a MODULE:FACTORY model without weights (its random initialisation)")
    g.add_argument("--trust-code", action="store_true",
                   help="load a run made from MODULE:FACTORY by importing the factory its meta.json records")
    if batch:
            g.add_argument("--allow-batch-dependent", action="store_true",
                       help="evaluate a model whose logits depend on the other inputs of the batch")


def add_data_arguments(g: Any) -> None:
    g.add_argument("--data", metavar="NAME", help=f"dataset for --model ({DATA_HELP})")
    g.add_argument("--data-root", metavar="DIR", help="dataset directory for file-backed datasets")
    g.add_argument("--num-classes", type=int, metavar="K", help="number of classes for --model (default: the dataset's)")
    g.add_argument("--normalize", type=float, nargs="+", metavar="V",
                   help="MEAN... STD... (one value per channel each) when the model expects normalised inputs")


def out_of(args: argparse.Namespace) -> Path:
    """The output directory of ``--run DIR [--out DIR]`` or ``--model … --out DIR``, before
    any model is loaded (its outputs are checked first)."""
    if not args.run and not args.model:
        raise ConfigError("give either --run DIR or --model MODULE:FACTORY (with --data and --out)")
    if args.run:
        if not is_run_dir(args.run):
            raise ConfigError(f"--run {args.run}: not a run directory (no meta.json)")
        return Path(args.out or args.run)
    if args.out is None:
        raise ConfigError("--model needs --out")
    return Path(args.out)


def from_args(args: argparse.Namespace, device: Any = "cpu") -> tuple[ModelSource, Path]:
    """The source and output directory of ``--run DIR`` or ``--model … --data … --out DIR``
    (``--run DIR --model MODULE:FACTORY``: a run made from that factory, named again)."""
    if not args.run and not args.model:
        raise ConfigError("give either --run DIR or --model MODULE:FACTORY (with --data and --out)")
    normalize = parse_normalize(args.normalize)
    if args.run:
        for opt in ("weights", "data", "data_root", "num_classes"):
            if getattr(args, opt) is not None:
                raise ConfigError(f"--{opt.replace('_', '-')} is for --model; a run directory names its own")
        if not is_run_dir(args.run):
            raise ConfigError(f"--run {args.run}: not a run directory (no meta.json)")
        return (from_run(args.run, device, normalize, factory=args.model,
                         trust_code=bool(getattr(args, "trust_code", False))), Path(args.out or args.run))
    for opt in ("data", "out"):
        if getattr(args, opt) is None:
            raise ConfigError(f"--model needs --{opt}")
    src = from_factory(args.model, args.weights, data=args.data, data_root=args.data_root,
                       num_classes=args.num_classes, normalize=normalize,
                       random_init=bool(getattr(args, "random_init", False)))
    return src, Path(args.out)


__all__ = ["ModelSource", "out_of", "check_output", "check_finite_weights", "from_run", "from_factory", "resolve", "from_args", "add_arguments",
           "add_data_arguments", "add_trust_arguments", "weights_flag", "import_factory", "build_factory_model", "parse_normalize", "is_run_dir"]

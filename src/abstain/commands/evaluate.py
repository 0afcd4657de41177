"""``abstain evaluate``: per-sample robustness records and the four-way partition.

Two forms:

* a run directory: ``abstain evaluate --run DIR --eps E [E ...] --norm linf --steps 40``
  rebuilds the checkpoint's model and evaluates the test split of the dataset named in its
  ``meta.json``;
* your own model: ``abstain evaluate --model package.module:factory --weights FILE
  --data NAME --data-root DIR --num-classes K --out DIR [--normalize MEAN... STD...]``
  builds the model with your code (``factory(num_classes=K)`` when the factory takes
  ``num_classes``, else ``factory()``), loads the weights safely (safetensors, or
  ``.pt``/``.pth`` with ``torch.load(weights_only=True)``) and runs the same evaluation.

Writes ``<DIR>/records/evaluate.csv`` (columns ``index, label, pred, robust@<ε>`` and
``robust@<2ε>``; ``index`` is the position in the test split) and the section
``"evaluate"`` of ``<DIR>/results.json`` (``nat_acc``, the partition per radius, and the
settings under ``meta``).
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
import time
from pathlib import Path
from typing import Any

HELP = "robustness-accuracy partition of a trained run or of your own model (APGD)"
DESCRIPTION = (
    "Per-sample robustness records (index, label, pred, robust@<eps>, robust@<2 eps>) and the "
    "robustness-accuracy partition per radius, with APGD aimed at the model's own prediction. "
    "Evaluate a run directory (--run DIR) or your own model (--model MODULE:FACTORY --weights FILE "
    "--data NAME --out DIR). Writes DIR/records/evaluate.csv and results.json['evaluate'].")


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("what to evaluate (either --run, or --model with --data and --out)")
    src.add_argument("--run", metavar="DIR", help="run directory (checkpoint) written by `abstain train`")
    src.add_argument("--model", metavar="MODULE:FACTORY",
                     help="your model: a factory in an importable module (the current directory is on the path)")
    src.add_argument("--weights", metavar="FILE", help="weights for --model (.safetensors, .pt or .pth)")
    src.add_argument("--data", metavar="NAME", help="dataset for --model (gauss3, digits, cifar10, cifar100, folder, mtsd)")
    src.add_argument("--data-root", metavar="DIR", help="dataset directory for file-backed datasets")
    src.add_argument("--num-classes", type=int, metavar="K", help="number of classes for --model (default: the dataset's)")
    src.add_argument("--normalize", type=float, nargs="+", metavar="V",
                     help="MEAN... STD... (one value per channel each) when --model expects normalised inputs")
    src.add_argument("--out", metavar="DIR", help="output directory for --model (records/ and results.json)")
    a = p.add_argument_group("attack")
    a.add_argument("--eps", type=float, nargs="+", required=True, metavar="E", help="radii (pixel space)")
    a.add_argument("--norm", default="linf", choices=("linf", "l2"))
    a.add_argument("--steps", type=int, default=40, help="APGD steps")
    a.add_argument("--ensemble", action="store_true",
                   help="stronger evaluation: APGD-CE, then APGD-DLR and targeted APGD on the survivors")
    a.add_argument("--no-double-eps", action="store_true", help="skip the 2ε flags (needed for S_ERI)")
    r = p.add_argument_group("run")
    r.add_argument("--batch-size", type=int, default=256)
    r.add_argument("--device", default="auto")
    r.add_argument("--seed", type=int, default=0, help="seed of the random starts and of --samples")
    r.add_argument("--samples", type=int, metavar="N",
                   help="evaluate a seeded, class-balanced subset of N test samples")
    r.add_argument("--save-adversarial", metavar="FILE.safetensors",
                   help="save the verified adversarial inputs of the non-robust samples")
    r.add_argument("--overwrite", action="store_true", help="replace an existing records/evaluate.csv")


def _import_factory(spec: str):
    from ..errors import ConfigError

    if ":" not in spec:
        raise ConfigError(f"--model must be 'package.module:factory', got {spec!r}")
    mod_name, attr = spec.split(":", 1)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"--model: cannot import module {mod_name!r}: {e}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ConfigError(f"--model: module {mod_name!r} has no callable {attr!r}")
    return factory


def _build_own_model(args: argparse.Namespace, num_classes: int):
    from torch import nn

    from ..checkpoint import load_foreign_state_dict, load_state_into
    from ..errors import ConfigError

    factory = _import_factory(args.model)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    model = factory(num_classes=num_classes) if "num_classes" in params else factory()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model: {args.model} returned {type(model).__name__}, not a torch nn.Module")
    if args.weights:
        load_state_into(model, load_foreign_state_dict(args.weights), source=args.weights)
    return model


def _normalize(values: list[float] | None):
    from ..errors import ConfigError

    if values is None:
        return None
    if len(values) % 2 or not values:
        raise ConfigError(f"--normalize takes MEAN... STD... (as many of each), got {len(values)} values")
    half = len(values) // 2
    mean, std = values[:half], values[half:]
    if any(s <= 0 for s in std):
        raise ConfigError(f"--normalize: std values must be positive, got {std}")
    return mean, std


def run(args: argparse.Namespace) -> int:

    from .. import data as data_mod
    from .. import distributed
    from ..checkpoint import load_checkpoint
    from ..errors import ConfigError
    from ..evaluation import evaluate, radii, record_columns, robust_key
    from ..io import update_json
    from ..records import write_records
    from ..utils import resolve_device

    if bool(args.run) == bool(args.model):
        raise ConfigError("give either --run DIR or --model MODULE:FACTORY (with --data and --out)")
    eps_list = radii(args.eps, not args.no_double_eps)   # validates every ε
    if args.steps < 0:
        raise ConfigError(f"--steps must be >= 0, got {args.steps}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be positive, got {args.batch_size}")
    device = resolve_device(args.device)
    normalize = _normalize(args.normalize)
    if args.run:
        for opt in ("weights", "data", "data_root", "num_classes", "out"):
            if getattr(args, opt) is not None:
                raise ConfigError(f"--{opt.replace('_', '-')} is for --model; a run directory names its own")
        out = Path(args.run)
        model, meta = load_checkpoint(out, device="cpu")
        if not meta.get("dataset"):
            raise ConfigError(f"{out}/meta.json names no dataset")
        dataset, root = meta["dataset"], meta.get("data_root")
        # the split the run was trained with: datasets drawn from a seed (gauss3) use the
        # training seed for both splits
        cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
        train_cfg = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
        data_seed = int(meta.get("data_seed", train_cfg.get("seed", 0)))
        ds = data_mod.load(dataset, "test", root=root, seed=data_seed)
        source: dict[str, Any] = {"run": str(out), "arch": meta.get("arch")}
    else:
        for opt in ("data", "out"):
            if getattr(args, opt) is None:
                raise ConfigError(f"--model needs --{opt}")
        out = Path(args.out)
        dataset, root, data_seed = args.data, args.data_root, 0
        ds = data_mod.load(dataset, "test", root=root, seed=data_seed)
        k = args.num_classes if args.num_classes is not None else int(getattr(ds, "num_classes", 0))
        if k < 2:
            raise ConfigError(f"--num-classes must be >= 2, got {k}")
        model = _build_own_model(args, k)
        source = {"model": args.model, "weights": args.weights}
    records_path = out / "records" / "evaluate.csv"
    if records_path.exists() and not args.overwrite:
        raise ConfigError(f"{records_path} exists; pass --overwrite to replace it")
    subset = None
    if args.samples is not None:
        if args.samples < 1:
            raise ConfigError(f"--samples must be positive, got {args.samples}")
        subset = data_mod.balanced_subset(ds.y, args.samples, ds.num_classes, seed=args.seed)
        ds = ds.subset(subset)
    distributed.init_from_env(device)
    t0 = time.time()
    res = evaluate(model, ds, eps=args.eps, norm=args.norm, steps=args.steps,
                   double_eps=not args.no_double_eps, ensemble=args.ensemble,
                   batch_size=args.batch_size, device=device, seed=args.seed, normalize=normalize,
                   save_adversarial=args.save_adversarial)
    cols = record_columns(res)
    if subset is not None:
        cols["index"] = subset.numpy()[cols["index"]]
        if args.save_adversarial and distributed.is_main():
            _remap_saved_indices(args.save_adversarial, subset, eps_list)
    if distributed.is_main():
        # results.json first, the records last: the records file marks a finished evaluation,
        # so a kill between the two writes leaves no records and the rerun needs no --overwrite.
        section = {
            "nat_acc": res["partition"][f"{eps_list[0]:g}"]["nat_acc"],
            "eps": res["partition"],
            "meta": {"eps": [float(e) for e in args.eps], "radii": eps_list, "norm": args.norm,
                     "steps": args.steps, "ensemble": bool(args.ensemble), "seed": args.seed,
                     "dataset": dataset, "split": "test", "n": int(len(cols["index"])),
                     "data_seed": data_seed,
                     "samples": args.samples, "subset": "class-balanced, seeded" if subset is not None else "all",
                     "seconds": round(time.time() - t0, 3), **source},
        }
        update_json(out / "results.json", "evaluate", section)
        write_records(records_path, cols)
        n = len(cols["index"])
        print(f"evaluated {n} samples of {dataset} (test) -> {records_path}")
        for e in eps_list:
            p = res["partition"][f"{e:g}"]
            print(f"  {robust_key(e)}: nat_acc={p['nat_acc']:.4f} rob_acc={p['rob_acc']:.4f} "
                  f"rob_inacc={p['rob_inacc']:.4f} nonrob_acc={p['nonrob_acc']:.4f} "
                  f"nonrob_inacc={p['nonrob_inacc']:.4f}")
    distributed.barrier()
    return 0


def _remap_saved_indices(path: str, subset, eps_list: list[float]) -> None:
    """Saved ``index@<ε>`` are positions in the subset; store dataset indices instead."""
    from safetensors.torch import load_file, save

    from ..io import atomic_write_bytes

    tensors = load_file(path)
    for e in eps_list:
        key = f"index@{e:g}"
        if key in tensors and tensors[key].numel():
            tensors[key] = subset[tensors[key]].contiguous()
    atomic_write_bytes(path, save(tensors))

"""``abstain train``: train or fine-tune a model from a TOML config into a run directory."""
from __future__ import annotations

import argparse
from typing import Any
from pathlib import Path

from .. import config as config_mod
from .. import distributed
from ..errors import AbstainError, ConfigError
from ..io import atomic_write_text, update_json
from ..jobs import check_seed
from ..outputs import LOCK, claim, is_stale_tmp, ours, record, remove_ours
from ..sources import import_factory, is_run_dir
from ..train import train_from_config
from ..utils import resolve_device

HELP = "train or fine-tune a model from a TOML config (resumable; torchrun for several processes)"
DESCRIPTION = (
    "Train a model with the loss, schedule and data of a TOML config (see configs/ and "
    "docs/train.md) into --out, a run directory: model.safetensors + meta.json (the best epoch "
    "on the validation split), train_state.pt (resume state), config.toml, log.jsonl (one line "
    "per epoch) and results.json (section \"train\"). Ctrl-C stops at the next batch with a "
    "checkpoint; --resume continues. Under `torchrun --nproc-per-node N -m abstain train ...` "
    "it trains with DistributedDataParallel.")

# files a training run writes into its directory (recorded in its manifest, abstain-files.json)
RUN_FILES = ("model.safetensors", "meta.json", "train_state.pt", "config.toml", "log.jsonl",
             "results.json")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="experiment config (TOML)")
    p.add_argument("--out", required=True, help="run directory")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out (the config must be unchanged)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (TOML syntax), e.g. --set train.lr=0.01")
    p.add_argument("--init", metavar="RUN|MODULE:FACTORY",
                   help="start from this model instead of the config's [model]: a run directory, or your "
                        "own factory (with --init-weights); recorded in the run's config.toml")
    p.add_argument("--init-weights", metavar="FILE", help="weights for --init MODULE:FACTORY (.safetensors, .pt)")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_mod.load(args.config, args.set)
    except RecursionError:
        raise ConfigError(f"{args.config} (or a --set value) is nested too deeply to be a config") from None
    check_seed(cfg["train"].get("seed", 0), "train.seed")
    if args.init is not None or args.init_weights is not None:
        cfg = _with_init(cfg, args.init, args.init_weights)
    out = Path(args.out)
    existing = _check_out(out, cfg, args.resume, args.overwrite)
    device = resolve_device(args.device)
    distributed.init_from_env(device)
    with claim(out, [], overwrite=False):          # creates and locks --out
        if distributed.is_main():
            if args.overwrite and existing:
                remove_ours(out, "--overwrite")
            record({out / name: "train" for name in RUN_FILES})
            if not args.resume:
                atomic_write_text(out / "config.toml", config_mod.dumps(cfg))
        distributed.barrier()
        try:
            _, summary = train_from_config(cfg, out, device)
        except AbstainError:
            # refused before any checkpoint (unknown arch/dataset, missing data, bad init file,
            # a loss that diverged at once): leave no half-made run behind, so the corrected
            # command can run as it is
            if distributed.is_main() and not args.resume and not (out / "train_state.pt").exists():
                remove_ours(out, "--overwrite")
            raise
        if distributed.is_main():
            update_json(out / "results.json", "train", summary)
    if distributed.is_main():
        best = summary.get("best_epoch")
        vals = ", ".join(f"{k[4:]} {v:.4f}" for k, v in summary.items()
                         if k.startswith("val_") and isinstance(v, float))
        print(f"abstain train: done; best epoch {best}" + (f" (validation: {vals})" if vals else "")
              + f"; model in {out}")
    return 0


def _check_out(out: Path, cfg: dict, resume: bool, overwrite: bool) -> bool:
    """Refuse an --out we may not write (read-only; before any lock or file); whether it
    holds files."""
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--out {out}: {parent} is a file, not a directory")
    # leftover ".<name>.<random>.tmp" files are interrupted atomic writes, and the lock of a
    # killed run is free: neither is a run
    existing = out.is_dir() and any(not is_stale_tmp(p) and p.name != LOCK for p in out.iterdir())
    if resume:
        saved = out / "config.toml"
        if not saved.is_file():
            raise ConfigError(f"--resume: {out} holds no run to resume (no config.toml)")
        try:
            changed = config_mod.diff(config_mod.loads(saved.read_text()), cfg)
        except (UnicodeDecodeError, OSError) as e:
            raise ConfigError(f"--resume: cannot read {saved}: {e}") from None
        if changed:
            raise ConfigError(f"--resume refused: the config differs from the run's config.toml in "
                              f"{', '.join(changed)}; undo the change, or start a new run "
                              "(another --out, or --overwrite)")
    elif existing and not overwrite:
        raise ConfigError(f"{out} already holds files; pass --resume to continue that run or "
                          "--overwrite to replace it")
    elif existing:
        ours(out, "--overwrite")      # refuse before removing anything
    return existing


def _with_init(cfg: Any, init: str | None, weights: str | None) -> Any:
    """The config with ``[model]`` taken from ``--init`` (a run directory, or MODULE:FACTORY)."""
    if init is None:
        raise ConfigError("--init-weights needs --init MODULE:FACTORY")
    model = dict(cfg["model"])
    if is_run_dir(init):
        if weights is not None:
            raise ConfigError(f"--init {init} is a run directory; drop --init-weights")
        model["init"] = str(Path(init).resolve())
    elif ":" in init:
        import_factory(init, "--init")     # fail now, not after the data is loaded
        model.update({"arch": init, "kwargs": {}, "init": str(Path(weights).resolve()) if weights else None})
    else:
        raise ConfigError(f"--init {init}: no run directory there (no meta.json), and not "
                          "'package.module:factory'")
    return config_mod.validate({**cfg.to_dict(), "model": model})



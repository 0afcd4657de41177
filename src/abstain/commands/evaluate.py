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

from .. import distributed
from ..attacks import ATTACKS, DEFAULT_ATTACK
from ..evaluation import default_batch_size
from ..jobs import EvaluateSettings as S
from ..jobs import EvaluateSettings, evaluate_job, evaluate_outputs
from ..outputs import claim
from ..records import ROBUST, column
from ..sources import add_arguments as add_source_arguments
from ..sources import from_args, out_of
from ..utils import resolve_device
from .options import DeprecatedAlias, add_split, default

HELP = "robustness-accuracy partition of a trained run or of your own model (APGD)"
DESCRIPTION = (
    "Per-sample robustness records (index, label, pred, robust@<eps>, robust@<2 eps>) and the "
    "robustness-accuracy partition per radius, with APGD aimed at the model's own prediction. "
    "Evaluate a run directory (--run DIR) or your own model (--model MODULE:FACTORY --weights FILE "
    "--data NAME --out DIR). Writes DIR/records/evaluate.csv and results.json['evaluate'].")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_source_arguments(p, out_help="output directory (records/ and results.json; default: the --run directory)")
    a = p.add_argument_group("attack")
    a.add_argument("--eps", type=float, nargs="+", required=True, metavar="E", help="radii (pixel space)")
    a.add_argument("--norm", default=default(S, "norm"), choices=("linf", "l2"),
                   help="threat model: the ℓ∞ or ℓ2 ball (pixel space)")
    a.add_argument("--steps", type=int, default=default(S, "steps"), help="attack steps (APGD iterations)")
    a.add_argument("--attack", choices=ATTACKS, default=None,
                   help=f"how robustness is checked (default {DEFAULT_ATTACK}: agrees with exact oracles near "
                        "the boundary; apgd-ce: the paper's protocol, for numbers compared with the paper; "
                        "ensemble: APGD-CE, APGD-DLR and targeted APGD run to the end; docs/attacks.md)")
    a.add_argument("--ensemble", dest="attack", nargs=0, action=DeprecatedAlias, new="--attack ensemble",
                   const="ensemble", help=argparse.SUPPRESS)
    a.add_argument("--no-double-eps", action="store_true", help="skip the 2ε flags (needed for S_ERI)")
    r = p.add_argument_group("run")
    r.add_argument("--batch-size", type=int, default=None,
                   help="inputs per batch (default: 256 on CPU, 1024 on CUDA); records do not depend on it")
    r.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    r.add_argument("--seed", type=int, default=default(S, "seed"), help="seed of the random starts and of --samples")
    r.add_argument("--samples", type=int, metavar="N", default=default(S, "samples"),
                   help="evaluate a seeded, class-balanced subset of N samples of --split (default: all)")
    add_split(r)
    r.add_argument("--save-adversarial", metavar="FILE.safetensors",
                   help="save the verified adversarial inputs of the non-robust samples")
    r.add_argument("--chunk", type=int, default=None, metavar="N",
                   help="inputs per resumable chunk (default: --batch-size); a rerun after an "
                        "interruption skips the finished chunks")
    r.add_argument("--overwrite", action="store_true", help="replace an existing records/evaluate.csv")


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    batch_size = default_batch_size(device) if args.batch_size is None else args.batch_size
    settings = EvaluateSettings(eps=args.eps, norm=args.norm, steps=args.steps,
                                double_eps=not args.no_double_eps, attack=args.attack,
                                batch_size=batch_size, seed=args.seed, samples=args.samples,
                                save_adversarial=args.save_adversarial, chunk=args.chunk, split=args.split)
    settings.check()
    out = out_of(args)
    with claim(out, evaluate_outputs(out, settings), args.overwrite):
        source, out = from_args(args)
        res = evaluate_job(source, out, settings, device, overwrite=args.overwrite,
                           allow_batch_dependent=args.allow_batch_dependent)
    if distributed.is_main():
        print(f"evaluated {res['meta']['n']} samples of {source.dataset} ({args.split}) -> {res['records']}")
        for e in res["radii"]:
            p = res["eps"][f"{e:g}"]
            print(f"  {column(ROBUST, e)}: nat_acc={p['nat_acc']:.4f} rob_acc={p['rob_acc']:.4f} "
                  f"rob_inacc={p['rob_inacc']:.4f} nonrob_acc={p['nonrob_acc']:.4f} "
                  f"nonrob_inacc={p['nonrob_inacc']:.4f}")
    return 0

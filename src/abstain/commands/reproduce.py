"""``abstain reproduce``: run the paper's experiments end to end and write the report.

Stages (DESIGN.md, "Experiments and their results") are cached under ``--out`` keyed by a
hash of their configuration, so rerunning the same command skips finished stages and
continues an interrupted one (see :mod:`abstain.pipeline`). The report
(``DIR/report.md``, ``DIR/report.html``) is rebuilt from the per-sample records at the end.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from ..errors import ConfigError
from ..utils import resolve_device

HELP = "run the paper's experiments (miniature or paper scale) and write the report"
DESCRIPTION = (
    "Run the experiment stages in order, each cached under OUT/<stage>/ by a hash of its "
    "configuration: rerunning the same command skips finished stages and continues an "
    "interrupted one. Ends by writing OUT/report.md and OUT/report.html from the per-sample "
    "records. --scale mini (default) uses gauss3, digits and MNIST-1D; --scale paper runs the CIFAR-10/100 "
    "and MTSD experiments of configs/ on data under --data-root."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", choices=("mini", "paper"), default="mini",
                   help="mini: gauss3, digits and MNIST-1D on a CPU; paper: CIFAR/MTSD (needs data and a GPU)")
    p.add_argument("--only", nargs="+", metavar="STAGE", default=None,
                   help="run only these stages (and the stages they depend on)")
    p.add_argument("--demo", action="store_true",
                   help="few seeds and short training (what `make demo` runs, < 10 min on 2 cores)")
    p.add_argument("--out", required=True, type=Path, help="output directory (reused to resume)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="directory holding the paper-scale datasets and checkpoints")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--quiet", action="store_true", help="no progress bars (log lines only)")
    p.add_argument("--force", action="store_true",
                   help="recompute the selected stages from scratch, ignoring cached results")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run up to N independent stages at once, each in its own process (the mini "
                        "stages use one core each: --jobs 2 on two cores; the records do not change)")


def _command_line() -> str:
    return "abstain " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "abstain reproduce"


def run(args: argparse.Namespace) -> int:
    from ..pipeline import run_pipeline  # noqa: PLC0415  heavy: every stage; keeps --help fast
    from ..report import build_report  # noqa: PLC0415  heavy: every stage; keeps --help fast

    if args.quiet:
        os.environ["ABSTAIN_QUIET"] = "1"
    if args.scale == "paper":
        from ..pipeline import resolve, stage_table  # noqa: PLC0415  heavy: every stage; keeps --help fast
        table = stage_table("paper")
        heavy = any(table[n].trains_large_models for n in resolve("paper", args.only))
        if heavy and resolve_device(args.device).type == "cpu":
            print("abstain reproduce: warning: --scale paper on a CPU fine-tunes ResNet-50 / "
                  "WideResNet-28-10 models on CIFAR and MTSD, which takes days; use a GPU "
                  "(--device cuda)", file=sys.stderr)
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    t0 = time.perf_counter()
    try:
        result = run_pipeline(args.out, scale=args.scale, demo=args.demo, only=args.only,
                              device=args.device, data_root=args.data_root, quiet=args.quiet,
                              force=args.force, raise_errors=getattr(args, "debug", False),
                              jobs=args.jobs)
    except KeyboardInterrupt:
        cmd = _command_line().replace(" --force", "")
        print(f"\nabstain reproduce: interrupted. Finished stages are kept in {args.out}; run the "
              f"same command again to continue where it stopped:\n  {cmd}", file=sys.stderr)
        return 130
    wall = time.perf_counter() - t0
    if not args.no_report:
        try:
            md, page = build_report(args.out)
        except KeyboardInterrupt:
            print("\nabstain reproduce: interrupted while writing the report; all stages are "
                  f"finished: `abstain report {args.out}` writes it", file=sys.stderr)
            return 130
        print(f"report: {page} and {md}")
    print(f"abstain reproduce: {sum(s in ('done', 'cached') for s in result.status.values())}/"
          f"{len(result.status)} stages finished in {wall:.1f} s "
          f"({sum(s == 'done' for s in result.status.values())} ran, "
          f"{sum(s == 'cached' for s in result.status.values())} cached)")
    if result.errors:
        for name, err in result.errors.items():
            print(f"abstain reproduce: stage {name}: {err}", file=sys.stderr)
        return 1
    return 0

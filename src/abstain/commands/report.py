"""``abstain report DIR``: rebuild DIR/report.md and DIR/report.html from the records alone."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "rebuild the report of an `abstain reproduce` directory from its per-sample records"
DESCRIPTION = (
    "Rebuild DIR/report.md and DIR/report.html from the per-sample records, figures and "
    "results meta under DIR, without loading or evaluating any model (works on results "
    "copied from another machine)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, metavar="DIR", help="output directory of `abstain reproduce`")


def run(args: argparse.Namespace) -> int:
    from ..report import build_report  # noqa: PLC0415  heavy: every stage; keeps --help fast

    md, page = build_report(args.dir)
    print(f"report: {page} and {md}")
    return 0

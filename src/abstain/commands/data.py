"""``abstain data``: prepare datasets (``abstain data mtsd``: MTSD -> classification crops)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data.mtsd import check_output_dir, convert_mtsd, source_dirs
from ..errors import DataError
from ..outputs import replace_dir

WRITER = "data mtsd"

HELP = "prepare datasets: convert the Mapillary Traffic Sign Dataset (MTSD) to 64x64 sign crops"
DESCRIPTION = (
    "`abstain data mtsd` converts MTSD's street-level images and per-image JSON annotations "
    "into a classification dataset as in the paper (Appendix A.1): drops occluded, "
    "out-of-frame, exterior, ambiguous, included and dummy boxes and the other-sign class, "
    "crops each remaining box with the random slack of eq. 19 (seeded), resizes to 64x64 and "
    "writes an ImageFolder tree (train/, test/) with manifest.csv (source image, box, crop, "
    "label per crop) and summary.json (classes, counts, skipped boxes by reason). Read it back "
    "with data name \"mtsd\" and --data-root / [data] root = the output directory.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    m = sub.add_parser("mtsd", help="convert MTSD annotations + images into sign crops",
                       description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m.add_argument("--annotations", required=True,
                   help="MTSD annotations directory (<image_key>.json files), e.g. "
                        "mtsd_v2_fully_annotated/annotations")
    m.add_argument("--images", required=True,
                   help="directory of the images (<image_key>.jpg), searched one level deep")
    m.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    m.add_argument("--splits", default=None,
                   help="directory with MTSD's train.txt/val.txt (default: ANNOTATIONS/../splits "
                        "when present, else a seeded split by image)")
    m.add_argument("--seed", type=int, default=0, help="seed of the crop slack (eq. 19) and of a seeded split")
    m.add_argument("--size", type=int, default=64, help="side of the square crops in pixels")
    m.add_argument("--slack", type=float, default=1.0, help="slack parameter lambda of eq. 19")
    m.add_argument("--test-fraction", type=float, default=0.2,
                   help="fraction of images in the test split when there are no split files")
    m.add_argument("--workers", type=int, default=1,
                   help="processes decoding and cropping images (at most the number of CPU cores)")
    m.add_argument("--overwrite", action="store_true",
                   help="replace an earlier conversion in --out (refused when it holds files abstain did not write)")


def _format(summary: dict) -> str:
    lines = [f"MTSD crops: {summary['boxes_kept']} of {summary['boxes_total']} boxes from "
             f"{summary['annotations']} annotated images; {summary['num_classes']} classes",
             f"  train: {summary['counts']['train']}   test: {summary['counts']['test']}   "
             f"({summary['split_method']})",
             "  skipped boxes by reason:"]
    for reason, n in summary["skipped"].items():
        lines.append(f"    {reason:<22} {n}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.dataset != "mtsd":  # pragma: no cover - argparse restricts the choices
        raise DataError(f"unknown dataset {args.dataset!r}")
    if args.workers < 1:
        raise DataError(f"--workers must be >= 1, got {args.workers}")
    check_output_dir(Path(args.out), source_dirs(args.annotations, args.images, args.splits))
    summary = replace_dir(
        args.out, lambda new: convert_mtsd(args.annotations, args.images, new, seed=args.seed, size=args.size,
                                           slack=args.slack, splits_dir=args.splits,
                                           test_fraction=args.test_fraction, workers=args.workers, progress=True),
        WRITER, args.overwrite)
    print(_format(summary))
    print(f"wrote {args.out} (ImageFolder train/ test/, manifest.csv, summary.json)")
    return 0

"""Mapillary Traffic Sign Dataset (MTSD) as a classification task (paper Appendix A.1, Fig. 5).

Conversion (``abstain data mtsd`` / :func:`convert_mtsd`)
--------------------------------------------------------
MTSD (Ertler et al. 2020, https://www.mapillary.com/dataset/trafficsign) ships one JSON
annotation per street-level image, ``annotations/<image_key>.json``, images
``images/<image_key>.jpg`` and split lists ``splits/{train,val,test}.txt`` (one image key
per line). The annotation schema, as read by the dataset's users (the paper authors'
``robustabstain/data/preprocessing/mtsd.py`` in ymerkli/robust-abstain, other public MTSD
converters) and described in the MTSD paper (attributes occluded, exterior, out-of-frame,
dummy, ambiguous, included)::

    {"width": 4000, "height": 3000, "ispano": false,
     "objects": [{"key": "<object key>", "label": "regulatory--stop--g1",
                  "bbox": {"xmin": 1.0, "ymin": 2.0, "xmax": 30.5, "ymax": 40.0},
                  "properties": {"occluded": false, "out-of-frame": false, "exterior": false,
                                 "ambiguous": false, "included": false, "dummy": false,
                                 "barrier": false, "direction-or-information": false,
                                 "highway": false}}, ...]}

``bbox`` is in pixels of the full image. On panoramas a box that wraps around the image
border has ``xmin > xmax`` and a ``cross_boundary`` entry splitting it into its left and
right parts; such boxes are skipped (reason ``cross-boundary``).

Steps (Appendix A.1):

1. drop boxes flagged ``occluded``, ``out-of-frame``, ``exterior``, ``ambiguous``,
   ``included`` or ``dummy``, and boxes of class ``other-sign``;
2. crop each remaining box with random slack, eq. 19: for a box
   ([x_min, x_max], [y_min, y_max]) of width w and height h the crop is
   ([x_min - λ α_x w, x_max + λ (1 - α_x) w], [y_min - λ α_y h, y_max + λ (1 - α_y) h])
   with α_x, α_y ~ U[0, 1] and λ = ``slack`` = 1.0; the crop is rounded outwards to whole
   pixels and clamped to the image, so it always contains the (clamped) box;
3. resize the crop to ``size`` x ``size`` (64; bilinear, aspect ratio not kept, as the
   authors' ``Resize((64, 64))``).

α_x, α_y are a hash of (seed, image key, object key), so a crop does not depend on the
order in which images are processed, on the number of workers, or on which other images
are present. Splits: the images of ``splits/train.txt`` form ``train``; those of
``splits/val.txt`` (and ``test.txt`` where its annotations exist) form ``test``, as in the
authors' code (MTSD's test annotations are not public). Without split files each image
goes to ``test`` with probability ``test_fraction`` (a hash of seed and image key). All
boxes of one image stay in one split.

Output (``out_dir`` must not exist: it is written into a temporary directory beside it and
renamed into place at the end, so an error leaves no partial output; replacing an earlier
conversion, and deciding which files in it are ours, is the command's part:
:mod:`abstain.commands.data` through :mod:`abstain.outputs`)::

    out_dir/train/<label>/<image_key>_<object_key>.png     ImageFolder tree (size x size)
    out_dir/test/<label>/...
    out_dir/manifest.csv      one row per crop: file, split, label, class_index, image_key,
                              object_key, source_image (relative to the images directory),
                              image size, box, alpha_x, alpha_y, crop
    out_dir/summary.json      classes, counts per split, every skipped box by reason, seed,
                              size, slack, sources
    out_dir/train.safetensors, test.safetensors   the same crops as uint8 tensors x (N, 3,
                              size, size) and y (N,), for fast loading

:func:`mtsd` reads that tree back as a :class:`~abstain.data.base.TensorDataset`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file, save
import torch

from ..errors import DataError
from ..io import atomic_write_bytes, atomic_write_json
from ..records import write_records
from ..utils import progress as bar
from .base import TensorDataset
from .folder import IMAGE_EXTENSIONS, check_pixels, read_image_tree

# Mean/std of the authors' 64x64 slack ("loose") MTSD crops (robust-abstain,
# utils/data_utils.py, "mtsd_l"): the normalisation of the paper's MTSD models.
MTSD_MEAN = (0.3684, 0.3784, 0.3492)
MTSD_STD = (0.2411, 0.2381, 0.2485)

SKIP_FLAGS = ("occluded", "out-of-frame", "exterior", "ambiguous", "included", "dummy")
OTHER_SIGN = "other-sign"
SKIP_REASONS = SKIP_FLAGS + (OTHER_SIGN, "cross-boundary", "degenerate-box", "not-in-split",
                             "missing-image", "image-size-mismatch")
SPLIT_OF_FILE = {"train.txt": "train", "val.txt": "test", "test.txt": "test"}
SUMMARY_FILE = "summary.json"
MANIFEST_FILE = "manifest.csv"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass
class _Box:
    key: str
    label: str
    box: tuple[float, float, float, float]  # clamped to the image
    alpha: tuple[float, float]
    crop: tuple[int, int, int, int]


@dataclass
class _Task:
    image_key: str
    image_path: str
    source: str  # image path relative to the images directory (for the manifest)
    width: int
    height: int
    split: str
    boxes: list[_Box] = field(default_factory=list)


# ---------------------------------------------------------------- annotations
def _num(v: Any, where: str, path: Path) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise DataError(f"malformed MTSD annotation {path}: {where} must be a finite number, got {v!r}")
    return float(v)


def read_annotation(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and check one MTSD annotation file; a :class:`DataError` names the file and field."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            ann = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise DataError(f"malformed MTSD annotation {path}: not valid JSON ({e})") from None
    if not isinstance(ann, dict):
        raise DataError(f"malformed MTSD annotation {path}: expected a JSON object")
    for k in ("width", "height"):
        v = _num(ann.get(k), k, path)
        if v <= 0 or v != int(v):
            raise DataError(f"malformed MTSD annotation {path}: {k} must be a positive integer, got {v!r}")
    objects = ann.get("objects")
    if not isinstance(objects, list):
        raise DataError(f"malformed MTSD annotation {path}: 'objects' must be a list")
    for i, obj in enumerate(objects):
        where = f"objects[{i}]"
        if not isinstance(obj, dict):
            raise DataError(f"malformed MTSD annotation {path}: {where} must be an object")
        if not isinstance(obj.get("label"), str) or not obj["label"]:
            raise DataError(f"malformed MTSD annotation {path}: {where}.label must be a non-empty string")
        bbox = obj.get("bbox")
        if not isinstance(bbox, dict):
            raise DataError(f"malformed MTSD annotation {path}: {where}.bbox must be an object")
        for k in ("xmin", "ymin", "xmax", "ymax"):
            _num(bbox.get(k), f"{where}.bbox.{k}", path)
        props = obj.get("properties", {})
        if not isinstance(props, dict):
            raise DataError(f"malformed MTSD annotation {path}: {where}.properties must be an object")
        if "key" in obj and not isinstance(obj["key"], str):
            raise DataError(f"malformed MTSD annotation {path}: {where}.key must be a string")
    return ann


def _uniform2(seed: int, image_key: str, object_key: str) -> tuple[float, float]:
    """α_x, α_y ~ U[0, 1) of eq. 19 from a hash of (seed, image, object): order-independent."""
    digest = hashlib.sha256(f"mtsd-slack|{seed}|{image_key}|{object_key}".encode()).digest()
    a = int.from_bytes(digest[:8], "big") / 2.0**64
    b = int.from_bytes(digest[8:16], "big") / 2.0**64
    return a, b


def _unit(seed: int, image_key: str) -> float:
    digest = hashlib.sha256(f"mtsd-split|{seed}|{image_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def slack_crop(box: tuple[float, float, float, float], alpha: tuple[float, float], slack: float,
               width: int, height: int) -> tuple[int, int, int, int]:
    """The crop of eq. 19 in whole pixels ``(x0, y0, x1, y1)`` (x1, y1 exclusive), clamped to
    the image: ``x0 = max(0, floor(x_min - λ α_x w))``, ``x1 = min(W, ceil(x_max + λ (1 - α_x) w))``,
    likewise in y. It contains ``box`` whenever ``box`` lies inside the image."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    ax, ay = alpha
    cx0 = max(0, math.floor(x0 - slack * ax * w))
    cy0 = max(0, math.floor(y0 - slack * ay * h))
    cx1 = min(width, math.ceil(x1 + slack * (1.0 - ax) * w))
    cy1 = min(height, math.ceil(y1 + slack * (1.0 - ay) * h))
    return cx0, cy0, cx1, cy1


def _split_lists(splits_dir: Path | None) -> dict[str, str] | None:
    if splits_dir is None or not splits_dir.is_dir():
        return None
    present = [f for f in SPLIT_OF_FILE if (splits_dir / f).is_file()]
    if not present:
        return None
    mapping: dict[str, str] = {}
    for fname in present:
        for line in (splits_dir / fname).read_text().splitlines():
            key = line.strip()
            if key:
                mapping.setdefault(key, SPLIT_OF_FILE[fname])
    return mapping


def _index_images(images_dir: Path) -> dict[str, Path]:
    """image key -> file, searching ``images_dir`` and its direct subdirectories
    (e.g. MTSD's archives extracted side by side, or train/ val/ folders)."""
    index: dict[str, Path] = {}
    dirs = [images_dir] + sorted(p for p in images_dir.iterdir() if p.is_dir())
    for d in dirs:
        for p in sorted(d.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                index.setdefault(p.stem, p)
    return index


def _plan(annotations_dir: Path, images_dir: Path, splits: dict[str, str] | None, seed: int,
          slack: float, test_fraction: float) -> tuple[list[_Task], dict[str, int], int, int]:
    """Read every annotation (all are checked before anything is written) and decide, per
    box, skip (with its reason) or crop. Returns tasks, skip counts, #boxes, #annotations."""
    files = sorted(p for p in annotations_dir.iterdir() if p.suffix == ".json" and p.is_file())
    if not files:
        raise DataError(f"no MTSD annotation files (*.json) in {annotations_dir}")
    anns = [(p, read_annotation(p)) for p in files]
    images = _index_images(images_dir)
    skipped = {r: 0 for r in SKIP_REASONS}
    tasks: list[_Task] = []
    total = 0
    for path, ann in anns:
        image_key = path.stem
        width, height = int(ann["width"]), int(ann["height"])
        if splits is not None:
            split = splits.get(image_key)
        else:
            split = "test" if _unit(seed, image_key) < test_fraction else "train"
        image_path = images.get(image_key)
        task = _Task(image_key, str(image_path or ""),
                     image_path.relative_to(images_dir).as_posix() if image_path else "",
                     width, height, split or "")
        seen_keys: set[str] = set()
        for i, obj in enumerate(ann["objects"]):
            total += 1
            props, bbox, label = obj.get("properties", {}), obj["bbox"], obj["label"]
            reason = next((f for f in SKIP_FLAGS if props.get(f, False) is True), None)
            if reason is None and label == OTHER_SIGN:
                reason = OTHER_SIGN
            if reason is None and ("cross_boundary" in bbox or bbox["xmin"] > bbox["xmax"]):
                reason = "cross-boundary"
            box = (max(0.0, float(bbox["xmin"])), max(0.0, float(bbox["ymin"])),
                   min(float(width), float(bbox["xmax"])), min(float(height), float(bbox["ymax"])))
            if reason is None and (box[2] - box[0] < 1.0 or box[3] - box[1] < 1.0):
                reason = "degenerate-box"
            if reason is None and split is None:
                reason = "not-in-split"
            if reason is None and not task.image_path:
                reason = "missing-image"
            if reason is not None:
                skipped[reason] += 1
                continue
            obj_key = obj.get("key", str(i))
            for what, value in (("label", label), ("object key", obj_key), ("image key", image_key)):
                if not _SAFE.match(value):
                    raise DataError(f"MTSD annotation {path}: objects[{i}] {what} {value!r} is not a safe "
                                    "file name (letters, digits, '.', '_', '-')")
            if obj_key in seen_keys:
                raise DataError(f"MTSD annotation {path}: duplicate object key {obj_key!r}")
            seen_keys.add(obj_key)
            alpha = _uniform2(seed, image_key, obj_key)
            task.boxes.append(_Box(obj_key, label, box, alpha, slack_crop(box, alpha, slack, width, height)))
        if task.boxes:
            tasks.append(task)
    return tasks, skipped, total, len(anns)


def _crop_image(task: _Task, staging: str, size: int) -> tuple[list[dict[str, Any]], list[np.ndarray], bool]:
    """Crop, resize and write one image's boxes; returns manifest rows, uint8 crops (H, W, 3)
    and False when the image's size differs from its annotation."""
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415  heavy: Pillow, image files only

    try:
        with Image.open(task.image_path) as im:
            if im.size != (task.width, task.height):
                return [], [], False
            check_pixels(im, Path(task.image_path))
            im = im.convert("RGB")
            rows, crops = [], []
            for b in task.boxes:
                patch = im.crop(b.crop).resize((size, size), Image.BILINEAR)
                rel = f"{task.split}/{b.label}/{task.image_key}_{b.key}.png"
                dest = Path(staging) / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                patch.save(dest, format="PNG")  # inside the staging dir: renamed into place at the end
                crops.append(np.asarray(patch, dtype=np.uint8))
                rows.append({"file": rel, "split": task.split, "label": b.label, "image_key": task.image_key,
                             "object_key": b.key, "source_image": task.source,
                             "image_width": task.width, "image_height": task.height,
                             "box_xmin": b.box[0], "box_ymin": b.box[1], "box_xmax": b.box[2],
                             "box_ymax": b.box[3], "alpha_x": b.alpha[0], "alpha_y": b.alpha[1],
                             "crop_xmin": b.crop[0], "crop_ymin": b.crop[1], "crop_xmax": b.crop[2],
                             "crop_ymax": b.crop[3]})
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read MTSD image {task.image_path}: {e}") from None
    return rows, crops, True


def _pack(crops: list[np.ndarray], labels: list[int], size: int) -> bytes:
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous() if crops else \
        torch.zeros((0, 3, size, size), dtype=torch.uint8)
    return save({"x": x, "y": torch.tensor(labels, dtype=torch.long)})


def source_dirs(annotations_dir: str | os.PathLike, images_dir: str | os.PathLike,
                splits_dir: str | os.PathLike | None = None) -> list[Path]:
    """The directories a conversion reads: annotations, images and (when present) the split
    lists (``splits_dir``, default ``annotations_dir/../splits``); refuses missing ones."""
    ann_dir, img_dir = Path(annotations_dir), Path(images_dir)
    for d, what in ((ann_dir, "annotations"), (img_dir, "images")):
        if not d.is_dir():
            raise DataError(f"MTSD {what} directory {d} does not exist")
    sdir = Path(splits_dir) if splits_dir is not None else ann_dir.parent / "splits"
    if splits_dir is not None and not sdir.is_dir():
        raise DataError(f"MTSD splits directory {sdir} does not exist")
    return [ann_dir, img_dir] + ([sdir] if sdir.is_dir() else [])


def convert_mtsd(annotations_dir: str | os.PathLike, images_dir: str | os.PathLike,
                 out_dir: str | os.PathLike, seed: int = 0, size: int = 64, slack: float = 1.0, *,
                 splits_dir: str | os.PathLike | None = None, test_fraction: float = 0.2,
                 workers: int = 1, progress: bool = False) -> dict[str, Any]:
    """Convert MTSD into a classification ImageFolder tree (Appendix A.1; see module docstring).

    ``splits_dir`` defaults to ``annotations_dir/../splits`` when that holds MTSD's split
    lists. Returns the summary (also written to ``out_dir/summary.json``). ``out_dir`` must
    not exist (``abstain data mtsd --overwrite`` replaces an earlier conversion). Any
    malformed annotation raises :class:`DataError` naming the file before anything is
    written; any error leaves no output.
    """
    ann_dir, img_dir, out = Path(annotations_dir), Path(images_dir), Path(out_dir)
    sources = source_dirs(ann_dir, img_dir, splits_dir)
    if size < 8:
        raise DataError(f"size must be >= 8 pixels, got {size}")
    if not (slack >= 0 and math.isfinite(slack)):
        raise DataError(f"slack must be a finite number >= 0, got {slack}")
    if not 0.0 <= test_fraction < 1.0:
        raise DataError(f"test_fraction must be in [0, 1), got {test_fraction}")
    sdir = Path(splits_dir) if splits_dir is not None else ann_dir.parent / "splits"
    check_output_dir(out, sources)
    if out.exists() or out.is_symlink():
        raise DataError(f"output directory {out} exists; convert into a new directory "
                        "(`abstain data mtsd --overwrite` replaces an earlier conversion)")
    workers = max(1, min(int(workers), os.cpu_count() or 1))   # more processes than cores only cost memory
    splits = _split_lists(sdir)
    tasks, skipped, total, n_ann = _plan(ann_dir, img_dir, splits, seed, slack, test_fraction)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        results = _run_tasks(tasks, str(staging), size, workers, progress)
        rows: list[dict[str, Any]] = []
        crops: list[np.ndarray] = []
        for task, (r, c, ok) in zip(tasks, results):
            if not ok:
                skipped["image-size-mismatch"] += len(task.boxes)
            rows += r
            crops += c
        # the order of the ImageFolder reader (class, then file name), so the packs and the
        # PNG tree give the same dataset
        order = sorted(range(len(rows)), key=lambda i: (rows[i]["split"], rows[i]["label"], rows[i]["file"]))
        rows, crops = [rows[i] for i in order], [crops[i] for i in order]
        classes = sorted({r["label"] for r in rows})
        if not classes:
            raise DataError(f"no MTSD boxes left to crop (skipped: { {k: v for k, v in skipped.items() if v} })")
        index = {c: i for i, c in enumerate(classes)}
        for split in ("train", "test"):
            for c in classes:  # every class directory in both splits (ImageFolder convention)
                (staging / split / c).mkdir(parents=True, exist_ok=True)
        counts = {}
        for split in ("train", "test"):
            sel = [i for i, r in enumerate(rows) if r["split"] == split]
            counts[split] = len(sel)
            atomic_write_bytes(staging / f"{split}.safetensors",
                               _pack([crops[i] for i in sel], [index[rows[i]["label"]] for i in sel], size))
        for r in rows:
            r["class_index"] = index[r["label"]]
        _write_manifest(staging / MANIFEST_FILE, rows)
        summary = {
            "dataset": "mtsd", "format": 1, "size": size, "slack": slack, "seed": seed,
            "classes": classes, "num_classes": len(classes), "counts": counts,
            "boxes_total": total, "boxes_kept": len(rows), "skipped": skipped,
            "annotations": n_ann, "images_cropped": sum(1 for _, _, ok in results if ok),
            "split_method": ("MTSD split files: train.txt -> train, val.txt/test.txt -> test"
                             if splits is not None else
                             f"seeded hash per image: test with probability {test_fraction}"),
            "sources": {"annotations": str(ann_dir.resolve()), "images": str(img_dir.resolve()),
                        "splits": str(sdir.resolve()) if splits is not None else None},
            "paper": "Appendix A.1, eq. 19 (lambda = slack)",
        }
        atomic_write_json(staging / SUMMARY_FILE, summary)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def check_output_dir(out: Path, sources: list[Path]) -> None:
    """Refuse an output directory that is, contains or lies inside a source directory, or
    whose path runs through a file."""
    out_r = out.resolve()
    for src in sources:
        s = src.resolve()
        if out_r == s or out_r in s.parents or s in out_r.parents:
            raise DataError(f"--out {out} overlaps the source directory {src}; write the crops elsewhere")
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            raise DataError(f"--out {out}: {parent} is a file, not a directory")


def _run_tasks(tasks: list[_Task], staging: str, size: int, workers: int,
               progress: bool) -> list[tuple[list[dict[str, Any]], list[np.ndarray], bool]]:
    if workers <= 1:
        return [_crop_image(t, staging, size) for t in bar(tasks, desc="mtsd crops", disable=None if progress else True)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        it: Iterable = pool.map(_crop_image, tasks, [staging] * len(tasks), [size] * len(tasks), chunksize=16)
        return list(bar(it, total=len(tasks), desc="mtsd crops", disable=None if progress else True))


def _write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    cols = ["file", "split", "label", "class_index", "image_key", "object_key", "source_image",
            "image_width", "image_height", "box_xmin", "box_ymin", "box_xmax", "box_ymax",
            "alpha_x", "alpha_y", "crop_xmin", "crop_ymin", "crop_xmax", "crop_ymax"]
    write_records(path, {c: np.array([r[c] for r in rows], dtype=object) for c in cols})


# ---------------------------------------------------------------- loading
def read_summary(root: str | os.PathLike) -> dict[str, Any]:
    path = Path(root) / SUMMARY_FILE
    if not path.is_file():
        raise DataError(f"{root} is not a converted MTSD tree (no {SUMMARY_FILE}); create one with "
                        "`abstain data mtsd --annotations DIR --images DIR --out DIR`")
    try:
        with open(path) as fh:
            summary = json.load(fh)
        classes = summary["classes"]
        if not isinstance(classes, list) or len(classes) < 2:
            raise ValueError("needs at least two classes")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, RecursionError) as e:
        raise DataError(f"corrupt {path}: {e}") from None
    return summary


def mtsd(split: str = "train", root: str | os.PathLike = ".", seed: int = 0, size: int = 64) -> TensorDataset:
    """The converted MTSD tree at ``root`` (see :func:`convert_mtsd`): float images
    (3, size, size) in [0, 1] and labels indexing ``summary.json["classes"]``.

    Reads ``<split>.safetensors`` when it matches ``size``, else the PNG tree (resized).
    ``seed`` is unused: the split was fixed at conversion."""
    root = Path(root)
    summary = read_summary(root)
    classes = list(summary["classes"])
    pack = root / f"{split}.safetensors"
    if pack.is_file() and int(summary.get("size", -1)) == size:
        try:
            tensors = load_file(str(pack))
            x, y = tensors["x"], tensors["y"]
        except (SafetensorError, KeyError, OSError) as e:
            raise DataError(f"corrupt or truncated {pack}: {e}") from None
        if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != (3, size, size):
            raise DataError(f"{pack}: expected uint8 images (N, 3, {size}, {size}), got {x.dtype} {tuple(x.shape)}")
    else:
        x, y, _ = read_image_tree(root / split, classes, size, "RGB", allow_empty_classes=True)
    return TensorDataset(x.float().div_(255.0), y, len(classes), "mtsd", classes)

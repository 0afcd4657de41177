"""Image datasets in the ImageFolder layout: ``root/<split>/<class>/<image>``.

One subdirectory per class; PNG, JPEG, BMP or PPM files read with Pillow, converted to
RGB (or grey with ``mode="L"``) and resized to ``size`` x ``size`` (bilinear, with
Pillow's antialiasing when shrinking). Class names are the sorted union of the class
directories of all splits under ``root``, so a class index means the same in ``train``
and ``test`` even when a split lacks a class.

Conversions of other pixel formats (stated here, applied silently): 16-bit grey images
(Pillow modes ``I;16*``, and ``I`` with values in 0–65535) are scaled from the full 16-bit
range, v·255/65535 rounded (Pillow's own conversion clips them at 255, which turned a
16-bit image white); float images (mode ``F``, no known range) and 32-bit values outside
0–65535 are refused. An alpha channel (RGBA, LA, a palette's transparency) is dropped, not
composited: transparent pixels keep their stored colour. CMYK becomes RGB by Pillow's
formula (no colour profile). An animated file gives its first frame. Files whose name has
an image extension but that are not regular files (a directory, a FIFO, a broken link or a
link loop) are not images and are skipped.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import DataError
from .base import TensorDataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")
SPLIT_DIRS = ("train", "test")


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def class_names(root: str | os.PathLike, splits: Sequence[str] = SPLIT_DIRS) -> list[str]:
    """Sorted union of the class subdirectories of ``root/<split>`` over ``splits``."""
    root = Path(root)
    names: set[str] = set()
    for split in splits:
        d = root / split
        if d.is_dir():
            names.update(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(names)


MAX_PIXELS = 50_000_000     # 7000 x 7000: larger than any photo we read; decoded only below it


def check_pixels(im, path: Path, limit: int = MAX_PIXELS) -> None:
    """Refuse an image whose header announces more than ``limit`` pixels, before decoding it
    (a few-KB PNG can announce gigabytes: a decompression bomb)."""
    w, h = im.size
    if w * h > limit:
        raise DataError(f"image {path} is {w} x {h} pixels (more than {limit:,}): refusing to decode it "
                        "(a decompression bomb?)")


def to_8bit(im, path: Path):
    """``im`` with 16-bit grey pixels scaled to 8 bits (v·255/65535, rounded: see the module
    docstring); other modes unchanged. Refuses float pixels and 32-bit values outside
    0–65535, whose range is not known."""
    from PIL import Image  # noqa: PLC0415  heavy: Pillow, image files only

    if im.mode == "F":
        raise DataError(f"image {path} has floating-point pixels (mode F) of no known range; "
                        "save it with 8 or 16 bits per channel")
    if not (im.mode == "I" or im.mode.startswith("I;16")):
        return im
    a = np.asarray(im).astype(np.int64)
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise DataError(f"image {path} has 32-bit pixels in [{a.min()}, {a.max()}], outside the 16-bit "
                        "range 0-65535; save it with 8 or 16 bits per channel")
    return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L")


def read_image(path: Path, size: int | None, mode: str = "RGB") -> np.ndarray:
    """One image as a uint8 array (H, W, C), resized to ``size`` x ``size`` when given
    (pixel formats converted as the module docstring states)."""
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415  heavy: Pillow, image files only

    try:
        with Image.open(path) as im:
            check_pixels(im, path)
            im = to_8bit(im, path).convert(mode)
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        detail = str(e).replace(f" '{path}'", "").replace(str(path), "the file")   # Pillow repeats the path
        raise DataError(f"cannot read image {path}: {detail}") from None
    return arr.reshape(arr.shape[0], arr.shape[1], -1)


def read_image_tree(split_dir: str | os.PathLike, classes: Sequence[str], size: int | None,
                    mode: str = "RGB", allow_empty_classes: bool = False,
                    workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[Path]]:
    """Read ``split_dir/<class>/*`` for the given class list.

    Returns ``(x uint8 (N, C, H, W), y int64 (N,), files)``, files sorted by class then
    name. Decoding runs in a thread pool (Pillow releases the GIL while decoding).
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"missing image directory {split_dir}")
    files: list[Path] = []
    labels: list[int] = []
    for idx, name in enumerate(classes):
        cdir = split_dir / name
        imgs = sorted(p for p in cdir.iterdir() if _is_image(p)) if cdir.is_dir() else []
        if not imgs and not allow_empty_classes:
            raise DataError(f"class directory {cdir} is missing or holds no images "
                            f"({', '.join(IMAGE_EXTENSIONS)})")
        files += imgs
        labels += [idx] * len(imgs)
    if not files:
        raise DataError(f"no images under {split_dir}")
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = list(pool.map(lambda p: read_image(p, size, mode), files))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"images under {split_dir} have different sizes {sorted(shapes)[:3]}…; pass size=")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.long), files


def folder(split: str = "train", root: str | os.PathLike = ".", seed: int = 0, size: int | None = None,
           mode: str = "RGB") -> TensorDataset:
    """The ``split`` of an ImageFolder tree under ``root`` (``root/train``, ``root/test``).

    Images become float (C, size, size) in [0, 1]; without ``size`` they must all have
    the same size. A class directory must not be empty (a class may be absent from one split
    when another split has it). ``seed`` is unused
    (the split is the directory's own).
    """
    root = Path(root)
    if not (root / split).is_dir():
        raise DataError(f"missing directory {root / split}: an ImageFolder root holds "
                        f"{'/, '.join(SPLIT_DIRS)}/ with one subdirectory per class")
    classes = class_names(root)
    if not classes:
        raise DataError(f"no class subdirectories under {root / split}")
    if len(classes) < 2:
        raise DataError(f"{root}: need at least two classes, found {classes}")
    for name in classes:  # a class may be absent from one split, but never an empty directory
        cdir = root / split / name
        if cdir.is_dir() and not any(_is_image(p) for p in cdir.iterdir()):
            raise DataError(f"class directory {cdir} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    x, y, _ = read_image_tree(root / split, classes, size, mode, allow_empty_classes=True)
    return TensorDataset(x.float().div_(255.0), y, len(classes), f"folder:{root.name}", classes)

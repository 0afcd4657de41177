"""Odd files in a ``folder`` dataset (issue 25, item 7): each is one ``DataError`` line naming
the file (exit 2 from the CLI), or a conversion the loader's docstring states, checked here
value by value.

Found and fixed (``data/folder.py``): a 16-bit grey PNG was clipped at 255 by Pillow's
conversion (a pixel of 1000/65535 read as white, so the whole image was white); now scaled
from the 16-bit range. The refusals of ``check_pixels`` and of the new range checks are no
longer wrapped in a second "cannot read image" prefix.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from abstain import data
from abstain.data.folder import to_8bit
from abstain.errors import DataError

from reliability_helpers import assert_clean_refusal, one_thread, run_main  # noqa: F401


def _rgb(path: Path, color, size=(8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _tree(root: Path) -> Path:
    """Two classes, two 8x8 RGB images each, in train/ and test/."""
    for split in ("train", "test"):
        for k, cls in enumerate(("cat", "dog")):
            for j in range(2):
                _rgb(root / split / cls / f"{j}.png", (40 * k + j, 100, 200))
    return root


def _load(root: Path, **kw):
    return data.load("folder", "train", root=str(root), **kw)


@pytest.mark.parametrize("kind", ["truncated_png", "zero_bytes", "garbage", "huge_header"])
def test_an_unreadable_image_is_one_error_naming_it(tmp_path, kind):
    root = _tree(tmp_path / "d")
    bad = root / "train" / "cat" / "bad.png"
    if kind == "truncated_png":
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(bad)
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    elif kind == "zero_bytes":
        bad.write_bytes(b"")
    elif kind == "garbage":
        bad.write_bytes(os.urandom(300))
    else:     # a valid PNG header announcing 100k x 100k pixels
        import struct
        import zlib

        ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
                        + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))
    with pytest.raises(DataError) as e:
        _load(root)
    msg = str(e.value)
    assert str(bad) in msg and "\n" not in msg and msg.count(str(bad)) == 1, msg


def test_sixteen_bit_grey_is_scaled_from_the_16_bit_range(tmp_path):
    root = _tree(tmp_path / "d")
    a = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(a).save(root / "train" / "cat" / "g16.png")
    assert Image.open(root / "train" / "cat" / "g16.png").mode.startswith("I;16")
    ds = _load(root)
    x = ds.x[2]                                      # cat: 0.png, 1.png, g16.png
    want = torch.from_numpy(((a.astype(np.int64) * 255 + 32767) // 65535).astype(np.float32) / 255)
    for c in range(3):
        assert torch.equal(x[c], want)
    assert 0 < float(x.max()) < 1                    # not clipped to white


@pytest.mark.parametrize("mode,value,want", [
    ("RGBA", (255, 0, 0, 0), (255, 0, 0)),          # alpha dropped: the stored colour stays
    ("LA", (128, 0), (128, 128, 128)),
    ("CMYK", (0, 255, 255, 0), (255, 0, 0)),         # Pillow's formula
    ("P", None, (0, 0, 255)),
    ("1", 1, (255, 255, 255)),
])
def test_other_modes_are_converted_as_stated(tmp_path, mode, value, want):
    root = _tree(tmp_path / "d")
    f = root / "train" / "cat" / ("odd.jpg" if mode == "CMYK" else "odd.png")
    if mode == "P":
        im = Image.new("P", (8, 8))
        im.putpalette([0, 0, 255] * 256)
    else:
        im = Image.new(mode, (8, 8), value)
    im.save(f)
    ds = _load(root)
    files = sorted(p.name for p in (root / "train" / "cat").iterdir())
    x = ds.x[files.index(f.name)]
    assert torch.equal((x[:, 0, 0] * 255).round().to(torch.int64), torch.tensor(want))


def test_float_and_out_of_range_32_bit_pixels_are_refused():
    with pytest.raises(DataError, match="floating-point pixels"):
        to_8bit(Image.new("F", (4, 4), 0.5), Path("f.tif"))
    with pytest.raises(DataError, match=r"outside the 16-bit range"):
        to_8bit(Image.new("I", (4, 4), 70_000), Path("i.png"))
    ok = to_8bit(Image.new("I", (4, 4), 65535), Path("i.png"))
    assert ok.mode == "L" and np.asarray(ok).min() == 255


def test_different_sizes_need_size_and_are_resized_with_it(tmp_path):
    root = _tree(tmp_path / "d")
    _rgb(root / "train" / "dog" / "big.png", (1, 2, 3), size=(20, 12))
    with pytest.raises(DataError, match="different sizes"):
        _load(root)
    assert _load(root, size=8).x.shape == (5, 3, 8, 8)


def test_non_files_named_like_images_are_skipped_without_blocking(tmp_path):
    root = _tree(tmp_path / "d")
    cat = root / "train" / "cat"
    (cat / "dir.png").mkdir()
    (cat / "loop.png").symlink_to(cat / "loop.png")
    os.mkfifo(cat / "fifo.png")
    (cat / "zero.png").symlink_to("/dev/zero")
    (cat / "gone.png").symlink_to(cat / "missing.png")
    ds = _load(root)
    assert len(ds) == 4 and ds.y.tolist() == [0, 0, 1, 1]


class Flat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x):
        return self.lin(x.flatten(1))


def flat() -> nn.Module:
    torch.manual_seed(0)
    return Flat()


def test_evaluate_on_a_folder_with_a_truncated_png_is_one_line(tmp_path, capsys):
    root = _tree(tmp_path / "d")
    bad = root / "test" / "dog" / "cut.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:60])
    out = tmp_path / "out"
    argv = ["evaluate", "--model", f"{__name__}:flat", "--random-init", "--data", "folder", "--data-root", root,
            "--eps", "0.05", "--steps", "2", "--device", "cpu", "--out", out]
    rc, _, err = run_main(argv, capsys)
    assert rc == 2
    assert_clean_refusal(rc, err, str(bad))
    assert not (out / "records").exists()
    bad.unlink()
    rc, _, err = run_main(argv, capsys)
    assert rc == 0, err

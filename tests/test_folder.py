"""ImageFolder datasets: layout, class order, resizing, errors naming the file/directory."""
import numpy as np
import pytest
import torch
from PIL import Image

from abstain import data
from abstain.errors import DataError


def _img(path, color, size=(10, 10), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)


def _tree(root):
    _img(root / "train" / "zebra" / "a.png", (255, 0, 0))
    _img(root / "train" / "zebra" / "b.jpg", (0, 0, 255), size=(20, 12))
    _img(root / "train" / "apple" / "c.png", (0, 255, 0), size=(7, 9))
    (root / "train" / "apple" / "notes.txt").write_text("not an image")
    _img(root / "test" / "zebra" / "d.png", (10, 20, 30))
    _img(root / "test" / "mango" / "e.jpeg", (200, 200, 200), fmt="JPEG")
    return root


def test_layout_classes_resize_and_values(tmp_path):
    root = _tree(tmp_path / "imgs")
    tr = data.load("folder", "train", root=str(root), size=16)
    te = data.load("folder", "test", root=str(root), size=16)
    # sorted union of the class directories of all splits: indices agree between splits
    assert tr.classes == te.classes == ["apple", "mango", "zebra"] and tr.num_classes == 3
    assert tr.input_shape == (3, 16, 16) and len(tr) == 3 and len(te) == 2
    assert tr.y.tolist() == [0, 2, 2] and te.y.tolist() == [1, 2]
    # solid colours survive resizing exactly (PNG) / nearly (JPEG)
    assert torch.allclose(tr.x[0], torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 16, 16))
    assert torch.allclose(tr.x[1], torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 16, 16))
    assert torch.allclose(tr.x[2], torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 16, 16), atol=0.02)
    assert torch.allclose(te.x[0], torch.full((3, 16, 16), 200 / 255), atol=0.02)


def test_grey_mode_and_original_size(tmp_path):
    root = tmp_path / "g"
    for c in ("a", "b"):
        for split in ("train", "test"):
            _img(root / split / c / "x.png", (90, 90, 90), size=(5, 6))
    ds = data.load("folder", "train", root=str(root), mode="L")
    assert ds.input_shape == (1, 6, 5)
    assert torch.allclose(ds.x, torch.full_like(ds.x, 90 / 255))


def test_mixed_sizes_need_size(tmp_path):
    root = _tree(tmp_path / "imgs")
    with pytest.raises(DataError, match="different sizes.*size="):
        data.load("folder", "train", root=str(root))


def test_missing_and_empty_directories(tmp_path):
    with pytest.raises(DataError, match=r"missing directory .*nothing.*train"):
        data.load("folder", "train", root=str(tmp_path / "nothing"), size=8)
    root = _tree(tmp_path / "imgs")
    (root / "train" / "empty").mkdir()
    with pytest.raises(DataError, match=r"class directory .*train/empty holds no images"):
        data.load("folder", "train", root=str(root), size=8)
    single = tmp_path / "single"
    _img(single / "train" / "only" / "a.png", (1, 2, 3))
    with pytest.raises(DataError, match="at least two classes"):
        data.load("folder", "train", root=str(single), size=8)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n garbage", None])
def test_unreadable_image_is_named(tmp_path, content):
    root = _tree(tmp_path / "imgs")
    bad = root / "train" / "apple" / "broken.png"
    if content is None:  # a real JPEG cut in half
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(bad, "JPEG")
        bad.write_bytes(bad.read_bytes()[:300])
    else:
        bad.write_bytes(content)
    with pytest.raises(DataError, match=r"cannot read image .*apple/broken\.png"):
        data.load("folder", "train", root=str(root), size=8)

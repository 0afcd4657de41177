"""MTSD conversion (Appendix A.1, eq. 19) on generated images + annotations in MTSD's schema.

Schema as in MTSD v2 (``mtsd_v2_fully_annotated/annotations/<key>.json``): ``width``,
``height``, ``ispano``, ``objects`` with ``key``, ``label``, ``bbox`` {xmin, ymin, xmax,
ymax[, cross_boundary]} and ``properties`` {occluded, out-of-frame, exterior, ambiguous,
included, dummy, barrier, direction-or-information, highway}.
"""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from abstain import data
from abstain.cli import main as cli_main
from abstain.data.folder import read_image_tree
from abstain.data.mtsd import SKIP_FLAGS, convert_mtsd, slack_crop
from abstain.errors import DataError
from abstain.records import read_records

FLAGS = ("occluded", "out-of-frame", "exterior", "ambiguous", "included", "dummy", "barrier",
         "direction-or-information", "highway")


def _obj(key, label, box, **flags):
    props = {f: False for f in FLAGS}
    props.update({k.replace("_", "-"): v for k, v in flags.items()})
    return {"key": key, "label": label, "properties": props,
            "bbox": dict(zip(("xmin", "ymin", "xmax", "ymax"), box))}


def _image(path, w, h, seed):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, "JPEG", quality=95)


def _fixture(tmp_path, with_splits=True):
    base = tmp_path / "mtsd_v2_fully_annotated"
    ann, img, spl = base / "annotations", base / "images", base / "splits"
    ann.mkdir(parents=True)
    img.mkdir()
    stop, curve, speed = "regulatory--stop--g1", "warning--curve-left--g1", "regulatory--maximum-speed-limit-40--g1"
    objects_a = [
        _obj("a0", stop, (80.5, 60.2, 110.0, 95.7)),
        _obj("a1", curve, (0.0, 0.0, 25.0, 18.0)),  # touching the top-left border
        _obj("a2", speed, (170.0, 120.0, 200.0, 150.0)),  # touching the bottom-right border
        _obj("a3", speed, (-3.0, 40.0, 12.0, 60.0)),  # slightly outside the image: clamped
    ]
    objects_a += [_obj(f"f{i}", stop, (30, 30, 50, 50), **{flag.replace("-", "_"): True})
                  for i, flag in enumerate(SKIP_FLAGS)]
    objects_a += [_obj("o1", "other-sign", (60, 10, 80, 30)),
                  _obj("o2", stop, (60, 10, 80, 30), occluded=True, dummy=True),  # counted once
                  _obj("ok-barrier", curve, (120.0, 20.0, 140.0, 44.0), barrier=True),  # not a skip flag
                  _obj("deg", stop, (50.0, 50.0, 50.4, 70.0))]
    files = {
        "imgA": {"width": 200, "height": 150, "ispano": False, "objects": objects_a},
        "imgB": {"width": 120, "height": 90, "ispano": False,
                 "objects": [_obj("b0", curve, (10.0, 20.0, 40.0, 50.0)), _obj("b1", stop, (60, 5, 119, 89))]},
        "imgC": {"width": 100, "height": 100, "ispano": False,  # no image file: missing-image
                 "objects": [_obj("c0", stop, (10, 10, 30, 30))]},
        "imgP": {"width": 300, "height": 100, "ispano": True,  # panorama box wrapping the border
                 "objects": [{**_obj("p0", stop, (290.0, 10.0, 8.0, 30.0)),
                              "bbox": {"xmin": 290.0, "ymin": 10.0, "xmax": 8.0, "ymax": 30.0,
                                       "cross_boundary": {"left": {"xmin": 0, "ymin": 10, "xmax": 8, "ymax": 30},
                                                          "right": {"xmin": 290, "ymin": 10, "xmax": 300,
                                                                    "ymax": 30}}}},
                             _obj("p1", speed, (100.0, 20.0, 130.0, 60.0))]},
        "imgX": {"width": 50, "height": 50, "objects": [_obj("x0", stop, (5, 5, 20, 20))]},  # in no split
    }
    for key, ann_obj in files.items():
        (ann / f"{key}.json").write_text(json.dumps(ann_obj))
    _image(img / "imgA.jpg", 200, 150, 0)
    _image(img / "imgB.jpg", 120, 90, 1)
    _image(img / "imgP.jpg", 300, 100, 2)
    _image(img / "imgX.jpg", 50, 50, 3)
    if with_splits:
        spl.mkdir()
        (spl / "train.txt").write_text("imgA\nimgC\nimgP\n")
        (spl / "val.txt").write_text("imgB\n")
    return ann, img, files


def test_conversion_skips_counts_and_crops(tmp_path):
    ann, img, files = _fixture(tmp_path)
    out = tmp_path / "crops"
    summary = convert_mtsd(ann, img, out, seed=3)
    expected_skips = {f: 1 for f in SKIP_FLAGS}
    expected_skips.update({"occluded": 2, "other-sign": 1, "cross-boundary": 1, "degenerate-box": 1,
                           "not-in-split": 1, "missing-image": 1, "image-size-mismatch": 0})
    assert summary["skipped"] == expected_skips
    kept = {"a0", "a1", "a2", "a3", "ok-barrier", "b0", "b1", "p1"}
    assert summary["boxes_kept"] == len(kept) and summary["counts"] == {"train": 6, "test": 2}
    assert summary["boxes_total"] == sum(len(f["objects"]) for f in files.values())
    assert summary["boxes_total"] == summary["boxes_kept"] + sum(expected_skips.values())
    assert summary["classes"] == sorted(["regulatory--stop--g1", "warning--curve-left--g1",
                                         "regulatory--maximum-speed-limit-40--g1"])
    assert json.loads((out / "summary.json").read_text()) == summary

    rows = read_records(out / "manifest.csv")
    assert set(rows["object_key"]) == kept
    for i in range(len(rows["file"])):
        w, h = int(rows["image_width"][i]), int(rows["image_height"][i])
        box = tuple(float(rows[f"box_{k}"][i]) for k in ("xmin", "ymin", "xmax", "ymax"))
        crop = tuple(int(rows[f"crop_{k}"][i]) for k in ("xmin", "ymin", "xmax", "ymax"))
        ax, ay = float(rows["alpha_x"][i]), float(rows["alpha_y"][i])
        # eq. 19 with lambda = 1, rounded outwards and clamped: an independent recomputation
        bw, bh = box[2] - box[0], box[3] - box[1]
        assert crop == (max(0, math.floor(box[0] - ax * bw)), max(0, math.floor(box[1] - ay * bh)),
                        min(w, math.ceil(box[2] + (1 - ax) * bw)), min(h, math.ceil(box[3] + (1 - ay) * bh)))
        assert 0 <= crop[0] <= box[0] < box[2] <= crop[2] <= w  # box inside crop inside image
        assert 0 <= crop[1] <= box[1] < box[3] <= crop[3] <= h
        assert 0 <= ax < 1 and 0 <= ay < 1
        png = Image.open(out / rows["file"][i])
        assert png.size == (64, 64) and png.mode == "RGB"
        assert rows["source_image"][i] == f"{rows['image_key'][i]}.jpg"  # relative to --images
        src = Image.open(img / rows["source_image"][i]).convert("RGB")
        assert np.array_equal(np.asarray(png), np.asarray(src.crop(crop).resize((64, 64), Image.BILINEAR)))
        assert rows["file"][i].startswith(f"{rows['split'][i]}/{rows['label'][i]}/")
    # the clamped boxes at the borders: crops start at 0 / end at the image size
    by_key = {k: i for i, k in enumerate(rows["object_key"])}
    assert rows["crop_xmin"][by_key["a1"]] == 0 and rows["crop_ymin"][by_key["a1"]] == 0
    assert rows["crop_xmax"][by_key["a2"]] == 200 and rows["crop_ymax"][by_key["a2"]] == 150
    assert rows["box_xmin"][by_key["a3"]] == 0.0
    assert len({round(float(a), 6) for a in rows["alpha_x"]}) == len(kept)  # fresh alpha per box
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_loader_reads_the_tree(tmp_path):
    ann, img, _ = _fixture(tmp_path)
    out = tmp_path / "crops"
    convert_mtsd(ann, img, out, seed=0)
    tr = data.load("mtsd", "train", root=str(out))
    te = data.load("mtsd", "test", root=str(out))
    rows = read_records(out / "manifest.csv")
    assert len(tr) == 6 and len(te) == 2 and tr.input_shape == (3, 64, 64) and tr.num_classes == 3
    assert tr.classes == te.classes
    # the safetensors pack equals the PNG tree
    x_png, y_png, files = read_image_tree(out / "train", tr.classes, 64, allow_empty_classes=True)
    assert torch.equal(tr.x, x_png.float() / 255) and torch.equal(tr.y, y_png)
    label_of = {f: int(c) for f, c in zip(rows["file"], rows["class_index"])}
    assert [label_of[str(f.relative_to(out))] for f in files] == y_png.tolist()
    small = data.load("mtsd", "test", root=str(out), size=32)  # other sizes from the PNGs
    assert small.input_shape == (3, 32, 32) and torch.equal(small.y, te.y)
    with pytest.raises(DataError, match="not a converted MTSD tree"):
        data.load("mtsd", "train", root=str(tmp_path))


def test_seeded_and_reproducible(tmp_path):
    ann, img, _ = _fixture(tmp_path)
    convert_mtsd(ann, img, tmp_path / "a", seed=7)
    convert_mtsd(ann, img, tmp_path / "b", seed=7, workers=2)
    convert_mtsd(ann, img, tmp_path / "c", seed=8)
    ma, mb, mc = (read_records(tmp_path / d / "manifest.csv") for d in "abc")
    for col in ("file", "alpha_x", "alpha_y", "crop_xmin", "crop_ymax"):
        assert np.array_equal(ma[col], mb[col])
    assert not np.array_equal(ma["alpha_x"], mc["alpha_x"])
    for f in ma["file"]:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_seeded_split_without_split_files(tmp_path):
    ann, img, _ = _fixture(tmp_path, with_splits=False)
    s = convert_mtsd(ann, img, tmp_path / "o", seed=1, test_fraction=0.5)
    rows = read_records(tmp_path / "o" / "manifest.csv")
    split_of = {}
    for k, sp in zip(rows["image_key"], rows["split"]):
        assert split_of.setdefault(k, sp) == sp  # all boxes of an image in one split
    assert s["skipped"]["not-in-split"] == 0 and "seeded" in s["split_method"]
    assert s["counts"]["train"] + s["counts"]["test"] == s["boxes_kept"] == 9


@pytest.mark.parametrize("content,msg", [
    ('{"width": 100, "height": 100, "objects": [', "not valid JSON"),
    ('{"width": 100, "height": 100, "objects": [{"key": "k", "label": "s", "bbox": '
     '{"xmin": 1, "ymin": 1, "ymax": 5}, "properties": {}}]}', r"objects\[0\]\.bbox\.xmax"),
    ('{"width": -5, "height": 100, "objects": []}', "width must be a positive integer"),
    ('[1, 2]', "expected a JSON object"),
])
def test_malformed_annotation_named_and_no_output(tmp_path, content, msg):
    ann, img, _ = _fixture(tmp_path)
    (ann / "zzz_bad.json").write_text(content)
    out = tmp_path / "crops"
    with pytest.raises(DataError, match=rf"zzz_bad\.json.*{msg}|{msg}.*zzz_bad\.json"):
        convert_mtsd(ann, img, out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_corrupt_image_leaves_no_partial_output(tmp_path):
    ann, img, _ = _fixture(tmp_path)
    (img / "imgB.jpg").write_bytes(b"\xff\xd8\xff garbage")  # processed after imgA was cropped
    out = tmp_path / "crops"
    with pytest.raises(DataError, match=r"cannot read MTSD image .*imgB\.jpg"):
        convert_mtsd(ann, img, out)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unsafe_label_refused(tmp_path):
    ann, img, _ = _fixture(tmp_path)
    (ann / "imgB.json").write_text(json.dumps({"width": 120, "height": 90,
                                               "objects": [_obj("b0", "../../evil", (1, 1, 20, 20))]}))
    with pytest.raises(DataError, match=r"imgB\.json.*label '\.\./\.\./evil' is not a safe file name"):
        convert_mtsd(ann, img, tmp_path / "crops")


def test_size_mismatch_is_counted(tmp_path):
    ann, img, _ = _fixture(tmp_path)
    _image(img / "imgB.jpg", 60, 45, 1)  # half the annotated size
    s = convert_mtsd(ann, img, tmp_path / "crops")
    assert s["skipped"]["image-size-mismatch"] == 2 and s["counts"]["test"] == 0


def test_cli_prints_summary_and_refuses_overwrite(tmp_path, capsys):
    ann, img, _ = _fixture(tmp_path)
    out = tmp_path / "crops"
    argv = ["data", "mtsd", "--annotations", str(ann), "--images", str(img), "--out", str(out), "--seed", "2"]
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    assert "8 of 20 boxes" in text and "occluded" in text and "train: 6" in text
    before = (out / "manifest.csv").read_text()
    assert cli_main(argv) == 2
    assert "exists" in capsys.readouterr().err
    assert cli_main(argv[:-1] + ["5", "--overwrite"]) == 0
    assert (out / "manifest.csv").read_text() != before  # replaced (another seed)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_slack_crop_oracle():
    # zero slack is the box itself (rounded outwards), full slack doubles each side length
    assert slack_crop((10.2, 20.0, 30.0, 40.5), (0.3, 0.9), 0.0, 100, 100) == (10, 20, 30, 41)
    assert slack_crop((10.0, 20.0, 30.0, 40.0), (0.5, 0.5), 1.0, 100, 100) == (0, 10, 40, 50)
    assert slack_crop((10.0, 20.0, 30.0, 40.0), (1.0, 0.0), 1.0, 35, 100) == (0, 20, 30, 60)

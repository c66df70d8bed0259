"""Detection data: COCO / YOLO / synthetic loaders, detection cards, letterbox and rect shapes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.data import DataError, DetSample, Preprocess, build_dataset, load_card
from zoo.data.cards import card_from_dict
from zoo.data.letterbox import (PAD_VALUE, DetEvalTransform, boxes_to_letterbox, eval_letterbox,
                                letterbox, rect_shape)
from zoo.data.yolo_format import build_yolo
from zoo.det.postprocess import scale_boxes


def _write_image(path: Path, hw: tuple[int, int], seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, size=(*hw, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    """Two images; image 7 has a person, a car and a crowd of people; image 3 has nothing."""
    _write_image(tmp_path / "val2017" / "000000000007.png", (40, 60), 1)
    _write_image(tmp_path / "val2017" / "000000000003.png", (50, 30), 2)
    gt = {
        "images": [{"id": 7, "file_name": "000000000007.png", "width": 60, "height": 40},
                   {"id": 3, "file_name": "000000000003.png", "width": 30, "height": 50}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 5, 20, 30], "area": 600, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [50, 30, 15, 15], "area": 225, "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [0, 0, 60, 10], "area": 600, "iscrowd": 1},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(gt))
    return tmp_path


# --------------------------------------------------------------------------------------------
# cards
# --------------------------------------------------------------------------------------------

def test_coco_card() -> None:
    card = load_card("coco")
    assert card.task == "detection" and card.num_classes == 80 == len(card.classes)
    ids = card.extra["category_ids"]
    assert len(set(ids)) == 80 and ids[0] == 1 and ids[-1] == 90 and 12 not in ids
    assert card.classes[0] == "person" and card.classes[79] == "toothbrush"
    assert card.input_size == (640, 640) and card.extra["format"] == "coco"
    assert card.mean == (0, 0, 0) and card.std == (255, 255, 255)
    assert len(card.palette) == 80


def test_synthetic_det_card_matches_synthetic_things() -> None:
    det, seg = load_card("synthetic-det"), load_card("synthetic")
    assert set(det.classes) == set(seg.thing_classes)
    assert [seg.class_index(c) for c in det.classes] == det.extra["category_ids"]


def test_detection_card_defaults_and_checks() -> None:
    base = {"name": "d", "task": "detection", "classes": ["a", "b"], "num_classes": 2,
            "input_size": [64, 64], "default_root": "x", "splits": ["val"]}
    card = card_from_dict(base)
    assert card.ignore_index == 255 and len(card.palette) == 2 and card.std == (255, 255, 255)
    with pytest.raises(DataError, match="category_ids must list 2 distinct"):
        card_from_dict({**base, "category_ids": [1, 1]})
    with pytest.raises(DataError, match="task must be one of"):
        card_from_dict({**base, "task": "tracking"})
    with pytest.raises(DataError, match="lacks key"):  # segmentation cards stay strict
        card_from_dict({**base, "task": "segmentation"})


# --------------------------------------------------------------------------------------------
# COCO json
# --------------------------------------------------------------------------------------------

def test_coco_loader_skips_crowd_and_maps_categories(coco_root: Path) -> None:
    ds = build_dataset("coco", root=coco_root, split="val")
    assert len(ds) == 2 and ds.image_ids == [3, 7]  # sorted by file name
    assert ds.ground_truth() == coco_root / "annotations" / "instances_val2017.json"
    empty = ds[0]
    assert isinstance(empty, DetSample) and empty.image.shape == (50, 30, 3)
    assert empty.boxes.shape == (0, 4) and empty.classes.shape == (0,)
    s = ds[1]
    assert s.image_id == 7 and s.image.dtype == np.uint8 and s.image.shape == (40, 60, 3)
    # crowd box skipped; car box clipped to the image; COCO id 3 (car) -> index 2
    np.testing.assert_allclose(s.boxes, [[10, 5, 30, 35], [50, 30, 60, 40]])
    assert s.classes.tolist() == [0, 2]
    assert ds.category_ids[2] == 3 and ds.index_of[90] == 79


def test_coco_loader_explicit_paths_and_errors(coco_root: Path, tmp_path: Path) -> None:
    ann = coco_root / "annotations" / "instances_val2017.json"
    ds = build_dataset("coco", split="val", images=coco_root / "val2017", annotations=ann)
    assert len(ds) == 2
    (coco_root / "val2017" / "000000000003.png").unlink()
    with pytest.raises(DataError, match=r"1 image\(s\) listed in .* are missing .*000000000003\.png"):
        build_dataset("coco", root=coco_root, split="val")
    with pytest.raises(DataError, match="not found"):
        build_dataset("coco", root=tmp_path / "nowhere", split="val")


# --------------------------------------------------------------------------------------------
# YOLO txt labels
# --------------------------------------------------------------------------------------------

def _yolo_root(tmp_path: Path, second_label: str) -> Path:
    root = tmp_path / "yolo"
    _write_image(root / "images" / "val" / "a.png", (40, 80))
    _write_image(root / "images" / "val" / "b.png", (20, 20))
    _write_image(root / "images" / "val" / "c.png", (20, 20))  # no label file: background
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "val" / "a.txt").write_text("1 0.5 0.5 0.5 0.5\n\n0 0.25 0.25 0.1 0.1\n")
    (root / "labels" / "val" / "b.txt").write_text(second_label)
    return root


def test_yolo_loader_reads_boxes(tmp_path: Path) -> None:
    root = _yolo_root(tmp_path, "0 0.5 0.5 1.0 1.0\n")
    ds = build_yolo(None, root, "val", names=["cat", "dog"])
    assert len(ds) == 3 and ds.classes == ("cat", "dog") and ds.image_ids == [1, 2, 3]
    a = ds[0]
    np.testing.assert_allclose(a.boxes, [[20, 10, 60, 30], [16, 8, 24, 12]])
    assert a.classes.tolist() == [1, 0]
    assert ds[2].boxes.shape == (0, 4)
    gt = ds.coco_gt()
    assert [im["width"] for im in gt["images"]] == [80, 20, 20]
    assert gt["annotations"][0]["bbox"] == [20.0, 10.0, 40.0, 20.0]


@pytest.mark.parametrize("line,why", [
    ("0 0.5 0.5 0.2\n", "expected 5 values"),
    ("0 0.5 zero 0.2 0.2\n", "not numbers"),
    ("2 0.5 0.5 0.2 0.2\n", r"class 2 is not an integer in 0\.\.1"),
    ("0 0.9 0.5 0.4 0.2\n", r"box .* is not normalised"),
])
def test_yolo_malformed_line_names_file_and_line(tmp_path: Path, line: str, why: str) -> None:
    root = _yolo_root(tmp_path, "0 0.5 0.5 0.2 0.2\n" + line)
    ds = build_yolo(None, root, "val", names=["cat", "dog"])
    with pytest.raises(DataError, match=rf"label '.*b\.txt' line 2: {why}") as e:
        ds[1]
    assert "\n" not in str(e.value)


def test_yolo_missing_split_lists_available(tmp_path: Path) -> None:
    root = _yolo_root(tmp_path, "")
    with pytest.raises(DataError, match="YOLO split 'train' not found.*available: val"):
        build_yolo(None, root, "train", names=["cat", "dog"])


# --------------------------------------------------------------------------------------------
# synthetic detection view
# --------------------------------------------------------------------------------------------

def test_synthetic_det_boxes_inside_image() -> None:
    ds = build_dataset("synthetic-det", split="val", num_images=3, size=(72, 96), progress=False)
    assert len(ds) == 3 and ds.classes == ("Pole", "SignSymbol", "Car", "Pedestrian", "Bicyclist")
    n = 0
    for i in range(len(ds)):
        s = ds[i]
        h, w = s.image.shape[:2]
        assert (h, w) == (72, 96)
        b = s.boxes
        assert ((b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= w) & (b[:, 3] <= h)).all()
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
        assert ((s.classes >= 0) & (s.classes < 5)).all()
        n += len(b)
    assert n > 0
    gt = ds.coco_gt()
    assert len(gt["images"]) == 3 and len(gt["annotations"]) == n
    assert {c["id"] for c in gt["categories"]} == {2, 6, 8, 9, 10}


# --------------------------------------------------------------------------------------------
# letterbox
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hw,size,expected", [
    ((480, 640), 640, (512, 672)),   # 0.75*20 + 0.5 = 15.5 -> 16; 20.5 -> 21 (x32)
    ((640, 480), 640, (672, 512)),
    ((640, 640), 640, (672, 672)),
    ((427, 640), 640, (448, 672)),   # 13.34 + 0.5 -> 14
    ((320, 640), 640, (352, 672)),   # exact half still gets the half-stride pad
    ((100, 1000), 640, (96, 672)),   # 2.0 + 0.5 -> 3
    ((360, 480), 480, (384, 512)),   # synthetic at its own size
])
def test_rect_shape(hw, size, expected) -> None:
    assert rect_shape(*hw, size) == expected


def test_eval_letterbox_round_trip() -> None:
    image = np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8)
    out, info = eval_letterbox(image, 640, rect=True)
    assert out.shape == (512, 672, 3) and info.shape == (512, 672)
    assert info.gain == (480 / 375, 640 / 500) and info.offset == (16, 16)
    assert (out[:16] == PAD_VALUE).all() and (out[:, :16] == PAD_VALUE).all()
    assert (out[-16:] == PAD_VALUE).all() and (out[16:-16, 16:-16] != PAD_VALUE).any()
    boxes = np.array([[0, 0, 500, 375], [10.5, 20.25, 100, 300]])
    there = boxes_to_letterbox(boxes, info)
    np.testing.assert_allclose(there[0], [16, 16, 656, 496])
    np.testing.assert_allclose(scale_boxes(there, info), boxes, atol=1e-9)
    back = scale_boxes(torch.tensor(there, dtype=torch.float32), info)
    np.testing.assert_allclose(back.numpy(), boxes, atol=1e-4)
    # odd padding: the image sits at the floor of the half padding
    out, info = eval_letterbox(np.zeros((427, 640, 3), np.uint8), 640)
    assert info.shape == (448, 672) and info.offset == (10, 16) and info.half_pad == (10.5, 16.0)
    out, info = eval_letterbox(np.zeros((427, 640, 3), np.uint8), 640, rect=False)
    assert info.shape == (640, 640) and info.offset == (106, 0)


def test_letterbox_square_scaleup_and_not() -> None:
    image = np.full((30, 60, 3), 7, np.uint8)
    out, info = letterbox(image, (128, 128))
    assert out.shape == (128, 128, 3) and info.gain == (64 / 30, 128 / 60) and info.offset == (32, 0)
    assert (out[32:96] == 7).all() and (out[:32] == PAD_VALUE).all()
    out, info = letterbox(image, (128, 128), scaleup=False)
    assert info.gain == (1.0, 1.0) and info.offset == (49, 34)
    b = np.array([[1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_allclose(scale_boxes(boxes_to_letterbox(b, info), info), b)


def test_det_eval_transform(coco_root: Path) -> None:
    pre = Preprocess(mean=(0, 0, 0), std=(1, 1, 1), scale=1 / 255)
    ds = build_dataset("coco", root=coco_root, split="val", transform=DetEvalTransform(pre, 64))
    x, info, sample = ds[1]
    assert x.shape == (3, 64, 96) and x.dtype == torch.float32  # 40x60 -> 43x64 -> rect 64x96
    assert info.orig_shape == (40, 60) and sample.image_id == 7
    assert float(x.max()) <= 1.0 and abs(float(x[0, 0, 0]) - PAD_VALUE / 255) < 1e-6
    with pytest.raises(DataError, match="multiple of the stride"):
        DetEvalTransform(pre, 100)

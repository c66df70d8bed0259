"""Detection post-processing (NMS, box mapping), COCO mAP, and the detection evaluation entry point."""
from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import shared_or_skip
from zoo.det.coco_eval import coco_map, detections_to_coco
from zoo.det.postprocess import (DEPLOY_NMS, MAP_NMS, non_max_suppression, scale_boxes, xywh2xyxy,
                                 xyxy2xywh)


def _pred(rows: list[list[float]], nc: int) -> torch.Tensor:
    """Rows of [cx, cy, w, h, obj, class probabilities...] as one image's (1, N, 5 + nc)."""
    t = torch.tensor(rows, dtype=torch.float32)
    assert t.shape[1] == 5 + nc
    return t.unsqueeze(0)


# --------------------------------------------------------------------------------------------
# NMS
# --------------------------------------------------------------------------------------------

def test_box_format_round_trip() -> None:
    xywh = torch.tensor([[50.0, 40.0, 20.0, 10.0]])
    assert xywh2xyxy(xywh).tolist() == [[40.0, 35.0, 60.0, 45.0]]
    assert torch.equal(xyxy2xywh(xywh2xyxy(xywh)), xywh)


def test_nms_same_class_overlap_keeps_best() -> None:
    pred = _pred([[50, 50, 20, 20, 0.9, 0.9, 0.1],
                  [52, 50, 20, 20, 0.8, 0.9, 0.1]], nc=2)  # IoU 0.82
    (det,) = non_max_suppression(pred, 0.25, 0.45)
    assert det.shape == (1, 6)
    torch.testing.assert_close(det[0], torch.tensor([40, 40, 60, 60, 0.81, 0]))


def test_nms_different_classes_both_kept() -> None:
    pred = _pred([[50, 50, 20, 20, 0.9, 0.9, 0.1],
                  [52, 50, 20, 20, 0.8, 0.1, 0.9]], nc=2)
    (det,) = non_max_suppression(pred, 0.25, 0.45)
    assert det[:, 5].tolist() == [0, 1]
    torch.testing.assert_close(det[:, 4], torch.tensor([0.81, 0.72]))
    (only1,) = non_max_suppression(pred, 0.25, 0.45, classes=[1])
    assert only1[:, 5].tolist() == [1]


def test_nms_conf_threshold_uses_obj_times_cls() -> None:
    pred = _pred([[10, 10, 4, 4, 0.5, 0.6, 0.0],    # score 0.30: kept
                  [30, 30, 4, 4, 0.5, 0.4, 0.0],    # score 0.20: dropped
                  [50, 50, 4, 4, 0.2, 1.0, 0.0]],   # objectness below the threshold: dropped
                 nc=2)
    (det,) = non_max_suppression(pred, 0.25, 0.45)
    assert det.shape == (1, 6) and det[0, :2].tolist() == [8, 8]
    (none,) = non_max_suppression(pred, 0.9, 0.45)
    assert none.shape == (0, 6)


def test_nms_multi_label_and_max_det() -> None:
    pred = _pred([[50, 50, 20, 20, 1.0, 0.6, 0.5]], nc=2)
    (det,) = non_max_suppression(pred, 0.25, 0.45, multi_label=True)
    assert sorted(det[:, 5].tolist()) == [0, 1]  # one box, two labels
    (det,) = non_max_suppression(pred, 0.25, 0.45, multi_label=False)
    assert det[:, 5].tolist() == [0]
    # 10 disjoint boxes: max_det keeps the best-scoring ones, in score order
    rows = [[20 * i + 5, 5, 8, 8, 0.5 + 0.05 * i, 1.0, 0.0] for i in range(10)]
    (det,) = non_max_suppression(_pred(rows, nc=2), 0.25, 0.45, max_det=3)
    torch.testing.assert_close(det[:, 4], torch.tensor([0.95, 0.9, 0.85]))
    (det,) = non_max_suppression(_pred(rows, nc=2), 0.25, 0.45, max_nms=4)
    assert len(det) == 4


def test_nms_batch_and_empty() -> None:
    pred = torch.zeros(2, 5, 7)
    pred[1, 0] = torch.tensor([5, 5, 2, 2, 0.9, 0.9, 0.0])
    out = non_max_suppression(pred, **{k: getattr(MAP_NMS, k) for k in
                                       ("conf_thres", "iou_thres", "max_det", "multi_label")})
    assert [o.shape for o in out] == [(0, 6), (1, 6)]
    assert DEPLOY_NMS.conf_thres == 0.25 and DEPLOY_NMS.iou_thres == 0.45
    assert MAP_NMS.conf_thres == 0.001 and MAP_NMS.iou_thres == 0.65 and MAP_NMS.max_det == 300


def test_scale_boxes_clips_and_compat() -> None:
    info = SimpleNamespace(orig_shape=(100, 200), gain=(0.5, 0.5), offset=(10, 0),
                           half_pad=(10.5, 0.0))
    boxes = torch.tensor([[-5.0, 0.0, 50.0, 40.0], [20.0, 12.0, 120.0, 80.0]])
    out = scale_boxes(boxes, info)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 100.0, 60.0], [40.0, 4.0, 200.0, 100.0]]))
    assert boxes[0, 0] == -5  # input untouched
    compat = scale_boxes(boxes, info, yolov5_compat=True)
    torch.testing.assert_close(compat[1, 1], torch.tensor(3.0))  # (12 - 10.5) / 0.5
    raw = scale_boxes(boxes.numpy(), info, clip=False)
    assert raw[0, 0] == -10 and raw[1, 3] == 140


# --------------------------------------------------------------------------------------------
# COCO mAP
# --------------------------------------------------------------------------------------------

def _gt() -> dict:
    """Two images, two objects of class 1 (one per image) and one of class 2."""
    return {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [50, 50, 40, 20], "area": 800, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [5, 60, 20, 30], "area": 600, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
    }


def _det(image_id: int, cat: int, bbox, score: float) -> dict:
    return {"image_id": image_id, "category_id": cat, "bbox": list(bbox), "score": score}


def test_map_perfect_is_one() -> None:
    dets = [_det(a["image_id"], a["category_id"], a["bbox"], 0.9) for a in _gt()["annotations"]]
    s = coco_map(dets, _gt())
    assert s.map == pytest.approx(1.0) and s.map50 == pytest.approx(1.0)
    assert s.per_class_ap == {"a": pytest.approx(1.0), "b": pytest.approx(1.0), "c": None}


def test_map_hand_computed_cases() -> None:
    gt = _gt()
    # class a: one of its two objects found -> precision 1 up to recall 0.5, none beyond: with
    # COCO's 101 recall points, AP = 51 / 101 at every IoU threshold. Class b: perfect.
    dets = [_det(1, 1, [10, 10, 30, 30], 0.9), _det(2, 2, [5, 60, 20, 30], 0.8)]
    s = coco_map(dets, gt)
    assert s.per_class_ap["a"] == pytest.approx(51 / 101)
    assert s.map == pytest.approx((51 / 101 + 1) / 2) and s.map50 == pytest.approx(s.map)
    # class a: a false positive ranked above both true positives -> precision 1/2 at recall 1/2,
    # 2/3 at recall 1; interpolated precision is 2/3 everywhere, so AP = 2/3.
    dets = [_det(1, 1, [60, 60, 30, 30], 0.95), _det(1, 1, [10, 10, 30, 30], 0.9),
            _det(2, 1, [50, 50, 40, 20], 0.8)]
    s = coco_map(dets, gt, category_ids=[1], class_names=["a"])
    assert s.per_class_ap == {"a": pytest.approx(2 / 3)}
    assert s.map == pytest.approx(1 / 3)  # class b (not named, still evaluated) was missed
    # a box shifted by 7 px: IoU 23/37 = 0.62, a match at IoU 0.50, 0.55 and 0.60 (3 of 10)
    shifted = [_det(1, 1, [17, 10, 30, 30], 0.9)]
    s = coco_map(shifted, gt, image_ids=[1], category_ids=[1], class_names=["a"])
    assert s.map50 == pytest.approx(1.0) and s.map == pytest.approx(0.3)


def test_map_restricted_to_evaluated_images_and_no_detections() -> None:
    dets = [_det(1, 1, [10, 10, 30, 30], 0.9)]
    s = coco_map(dets, _gt(), image_ids=[1])  # image 2's objects are not charged
    assert s.map == pytest.approx(1.0) and s.images == 1
    with pytest.raises(ValueError, match="outside the evaluated images"):
        coco_map(dets, _gt(), image_ids=[2])
    with pytest.warns(RuntimeWarning, match="no detections"):
        s = coco_map([], _gt())
    assert s.map == 0 and s.map50 == 0 and s.detections == 0


def test_detections_to_coco() -> None:
    det = torch.tensor([[10.0, 20.0, 40.0, 60.0, 0.5, 2.0]])
    (d,) = detections_to_coco(det, 7, category_ids=[1, 3, 8])
    assert d == {"image_id": 7, "category_id": 8, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 0.5}


# --------------------------------------------------------------------------------------------
# evaluation entry point
# --------------------------------------------------------------------------------------------

def _needs_yolov5() -> None:
    if importlib.util.find_spec("zoo.det.yolov5") is None:
        pytest.skip("zoo.det.yolov5 (the YOLOv5 network) is not in this checkout")


def test_cli_detection_on_synthetic_det(capsys) -> None:
    """Wiring only: an untrained yolov5n on two tiny synthetic images, JSON output."""
    _needs_yolov5()
    from zoo.data import build_dataset
    from zoo.evaluate import main

    ds = build_dataset("synthetic-det", split="val", num_images=2, size=(64, 96), progress=False)
    assert main(["--model", "yolov5n", "--data", "synthetic-det", "--data-root", str(ds.root),
                 "--weights", "random", "--img-size", "96", "--nms", "deploy", "--conf", "1e-6",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["task"] == "detection" and res["images"] == 2 and res["img_size"] == 96
    assert res["detections"] > 0 and 0 <= res["map"] <= 1
    assert set(res["per_class_ap"]) == set(ds.classes)
    assert res["nms"] == {**DEPLOY_NMS.as_dict(), "conf_thres": 1e-6}
    assert res["timing"]["nms_ms"]["n"] == 2


def test_segmentation_model_on_detection_data_is_a_usage_error(capsys) -> None:
    from zoo.evaluate import main

    with pytest.raises(SystemExit) as e:
        main(["--model", "espnet", "--data", "coco", "--weights", "random"])
    assert e.value.code == 2 and "is a segmentation model" in capsys.readouterr().err


@pytest.mark.slow
def test_yolov5n_coco_tiny_reproduces_reference() -> None:
    """yolov5n.pt on coco-tiny val, YOLOv5 val.py settings: mAP50-95 0.3308, mAP50 0.5062.

    ``yolov5_compat`` maps boxes back with the reference's half-pixel padding quirk; the rest of
    the remaining difference (one detection) is the float precision of its NMS class offsets.
    """
    _needs_yolov5()
    weights = shared_or_skip("weights", "yolov5n.pt")
    root = shared_or_skip("data", "coco-tiny")
    from zoo.data.letterbox import RESIZE_BACKEND
    from zoo.evaluate import EvalConfig, run_eval

    res = run_eval(EvalConfig(model="yolov5n", data="coco", data_root=str(root), split="val",
                              weights=str(weights), yolov5_compat=True))
    tol = 5e-4 if RESIZE_BACKEND == "opencv" else 4e-3  # Pillow's resize rounds differently
    assert res["images"] == 80
    assert res["map"] == pytest.approx(0.3308, abs=tol)
    assert res["map50"] == pytest.approx(0.5062, abs=tol)
    assert res["timing"]["model_ms"]["n"] == 79 and res["timing"]["nms_ms"]["n"] == 80

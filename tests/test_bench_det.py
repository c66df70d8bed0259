"""bench.run on detection datasets (issue #7 part 7): YOLOv5 cells on a tiny COCO-format fixture,
the detection pieces of the harness (letterbox, box agreement), and the official yolov5n on
coco-tiny when ../shared is present."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, shared_or_skip

FAST = ["--iters", "3", "--warmup", "1", "--min-time", "0", "--threads", "1", "--no-progress"]
# Category ids of the fixture (COCO ids of person, car, dog = class indices 0, 2, 16 of the coco card).
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]
CLASS_INDEX = {1: 0, 3: 2, 18: 16}


def write_coco_split(root: Path, split: str, count: int, hw=(96, 128), seed: int = 0) -> None:
    """A COCO-layout split: grey images with a few coloured rectangles and their boxes."""
    rng = np.random.default_rng(seed)
    images_dir = root / f"{split}2017"
    images_dir.mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    h, w = hw
    images, anns = [], []
    for i in range(count):
        img = np.full((h, w, 3), 90, np.uint8) + rng.integers(0, 20, size=(h, w, 3), dtype=np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            bw, bh = int(rng.integers(12, w // 2)), int(rng.integers(12, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            cat = CATEGORIES[int(rng.integers(0, len(CATEGORIES)))]["id"]
            img[y:y + bh, x:x + bw] = (40 * cat) % 255
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "bbox": [x, y, bw, bh],
                         "area": bw * bh, "iscrowd": 0})
        name = f"{i + 1:012d}.png"
        Image.fromarray(img).save(images_dir / name)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
    (root / "annotations" / f"instances_{split}2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))


@pytest.fixture(scope="module")
def det_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco-fixture")
    write_coco_split(root, "train", 16, seed=1)  # static PTQ needs >= 16 calibration images
    write_coco_split(root, "val", 4, seed=2)
    return root


@pytest.fixture(scope="module")
def det_weights(tmp_path_factory) -> Path:
    """Seeded yolov5n (80 classes) that outputs a few dozen boxes per image: BatchNorm statistics
    from one train-mode pass (so scores vary from anchor to anchor instead of tying), and Detect
    biases raised for objectness and three classes (untrained weights sit below every confidence
    threshold: the obj x cls prior is ~1e-5, which would leave nothing to match)."""
    import torch

    from zoo.checkpoints import save_checkpoint
    from zoo.det.yolov5 import yolov5n

    torch.manual_seed(0)
    net = yolov5n(num_classes=80)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass sets the statistics
    net.train()
    with torch.no_grad():
        net(torch.rand(4, 3, 128, 128))
        net.eval()
        for conv in net.detect.m:
            b = conv.bias.view(net.detect.na, net.detect.no)
            b[:, 4] += 3.0                        # ~40 boxes above 0.25 per 128x128 image
            for cls, boost in ((0, 6.5), (2, 6.0), (16, 5.5)):  # person, car, dog
                b[:, 5 + cls] += boost
    path = tmp_path_factory.mktemp("det-weights") / "yolov5n_biased.pt"
    save_checkpoint(path, {"model": net.state_dict(), "meta": {"model": "yolov5n", "dataset": "coco"}})
    return path


def _bench(args, tmp_path, artifacts, timeout=900, env=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEZOO_ARTIFACTS": str(artifacts), **(env or {})}
    return subprocess.run([sys.executable, "-m", "bench.run", *args, "--out", str(tmp_path / "results")],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


def _records(tmp_path):
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "results").glob("*.json"))]


# ---------------------------------------------------------------------------------------------
# end to end (subprocesses)


def test_detection_sweep_failure_reuse_and_report(det_data, det_weights, tmp_path):
    artifacts = tmp_path / "artifacts"
    args = ["--model", "yolov5n", "--data", "coco", "--data-root", str(det_data), "--weights", str(det_weights),
            "--input-size", "128x128", "--backend", "torch", "onnxruntime", *FAST]
    # 1) the ONNX Runtime cell crashes inside its process: a failed record, the sweep goes on
    first = _bench(args, tmp_path, artifacts, env={"EDGEZOO_BENCH_FAULT": "raise:yolov5n/fp32/onnxruntime/*"})
    assert first.returncode == 1, first.stderr[-3000:]
    recs = {r["backend"]: r for r in _records(tmp_path)}
    assert recs["onnxruntime"]["status"] == "failed" and "fault injected" in recs["onnxruntime"]["error"]
    assert recs["torch"]["status"] == "ok", recs["torch"]["error"]
    # 2) rerun: the ok torch cell is reused, the failed one runs again
    second = _bench(args, tmp_path, artifacts)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "yolov5n/fp32/torch/128x128/b1: stored (ok" in second.stderr
    assert "exporting" not in second.stderr and "reference" not in second.stderr  # both cached
    all_recs = _records(tmp_path)
    assert len(all_recs) == 3
    ok = {r["backend"]: r for r in all_recs if r["status"] == "ok"}
    assert set(ok) == {"torch", "onnxruntime"}
    for backend, r in ok.items():
        assert r["schema"] == 2 and r["task"] == "detection" and r["input_hw"] == [128, 128]
        m = r["metrics"]
        for k in ("map50_95", "map50", "box_agreement"):
            assert isinstance(m[k], float) and 0 <= m[k] <= 1, (backend, k, m[k])
        assert m["boxes_ref"] > 0 and m["detections"] > 0 and r["images"] == 4
        assert r["reference"]["status"] == "ok" and "map50_95" in r["reference"]
        assert abs(m["map50_95_delta_vs_fp32_torch"]) <= 0.02
        for lat in ("latency_ms", "e2e_latency_ms", "postprocess_latency_ms", "preprocess_latency_ms"):
            assert r[lat]["median"] > 0, lat
        assert r["postprocess_latency_ms"]["n"] == r["e2e_latency_ms"]["n"] == len(r["postprocess_samples_ms"])
        assert r["e2e_latency_ms"]["median"] > r["postprocess_latency_ms"]["median"]
        assert 0 < r["postprocess_share_of_e2e"] < 1
        assert r["peak_rss_e2e_mb"] >= r["peak_rss_mb"] > 0 and r["imports_torch"] is True
        assert r["protocol"]["nms"]["implementation"].startswith("torchvision.ops.batched_nms")
        assert len(r["data"]["sha256"]) == 64 and r["data"]["images"] == 4
    # the reference itself, re-run in a cell, matches itself box for box
    assert ok["torch"]["metrics"]["box_agreement"] == 1.0
    assert ok["onnxruntime"]["metrics"]["box_agreement"] >= 0.9
    # ONNX Runtime measured its model phase without torch, and its memory numbers show the difference
    ort = ok["onnxruntime"]
    assert ort["imports_torch_model_phase"] is False and ok["torch"]["imports_torch_model_phase"] is True
    assert ort["peak_rss_mb"] < ort["peak_rss_e2e_mb"] - 150
    assert "| yolov5n | fp32" in second.stdout and "mAP50-95 %" in second.stdout

    # reports render detection records with mAP instead of mIoU
    from reports.build import build_reports

    build_reports(tmp_path / "results", "coco", tmp_path / "reports")
    table1 = (tmp_path / "reports" / "coco" / "table1_fp32_onnxruntime.md").read_text()
    assert "mAP50-95 (%)" in table1 and "| yolov5n |" in table1 and "mIoU" not in table1
    assert (tmp_path / "reports" / "coco" / "per_class_ap_onnxruntime.png").is_file()


def test_static_int8_keeps_decode_float_and_torch_int8_and_qat_cells_run(det_data, det_weights, tmp_path):
    import onnx

    from quant.qat import QATConfig, qat_finetune

    artifacts = tmp_path / "artifacts"
    # The QAT checkpoint is made here at the cells' 128x128 (bench.run would fine-tune at the
    # recipe's 640: ~4x this test's time); the sweep must find and reuse it by its parent's hash.
    qat_finetune(QATConfig(model="yolov5n", data="coco", data_root=str(det_data), weights=str(det_weights), epochs=1,
                           crop=(128, 128), calib_images=16, artifacts=artifacts, threads=1, progress=False))
    res = _bench(["--model", "yolov5n", "--data", "coco", "--data-root", str(det_data), "--weights", str(det_weights),
                  "--input-size", "128x128", "--quant", "static", "qat", "--backend", "torch", "onnxruntime",
                  "--calib-images", "16", "--max-images", "2", "--qat-epochs", "1", *FAST],
                 tmp_path, artifacts)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fine-tuning" not in res.stderr, res.stderr[-3000:]
    recs = {(r["variant"], r["backend"]): r for r in _records(tmp_path)}
    # --calib-method unset: each backend's calibrator gets the method measured best for detection.
    assert recs[("static", "torch")]["calib_method"] == "entropy" and "fx-entropy" in recs[("static", "torch")]["quant_config"]
    assert recs[("static", "onnxruntime")]["calib_method"] == "percentile"
    assert "-percentile-" in recs[("static", "onnxruntime")]["quant_config"]
    assert recs[("qat", "torch")]["calib_method"] is None
    for key, rec in recs.items():
        assert rec["status"] == "ok", (key, rec["error"])
        assert rec["metrics"]["map50_95"] is not None and rec["metrics"]["box_agreement"] is not None
    for variant in ("static", "qat"):  # PyTorch's own INT8 kernels, every convolution
        q = recs[(variant, "torch")]["artifact"]["quant"]
        assert q["int8_modules"] == 60 and q["float_convs"] == 0, q
        assert recs[(variant, "torch")]["runtime"]["int8_convert_s"] > 0
    assert recs[("qat", "onnxruntime")]["artifact"]["quant"]["graph"]["quantized_convs"] == 60
    static = recs[("static", "onnxruntime")]
    assert static["status"] == "ok", static["error"]
    assert static["metrics"]["map50_95"] is not None and static["metrics"]["box_agreement"] is not None
    assert static["artifact"]["quant"]["graph"]["quantized_convs"] > 50

    proto = onnx.load(static["artifact"]["path"])
    producer = {o: n for n in proto.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {t.name for t in proto.graph.initializer}
    head = [n for n in proto.graph.node if n.name.startswith("/model.24/")
            and n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    convs = [n for n in head if n.op_type == "Conv"]
    decode = [n for n in head if n.op_type != "Conv"]
    assert len(convs) == 3 and len(decode) > 20 and any(n.op_type == "Sigmoid" for n in decode)
    for conv in convs:  # the Detect 1x1 convs keep float weights and a float output
        assert conv.input[1] in inits, conv.name
        assert all(c.op_type != "QuantizeLinear" for c in consumers.get(conv.output[0], []))
    for node in decode:  # nothing in the decode subgraph is quantized
        for i in node.input:
            assert i in inits or producer.get(i) is None or producer[i].op_type != "DequantizeLinear", (node.name, i)
        for o in node.output:
            assert all(c.op_type != "QuantizeLinear" for c in consumers.get(o, [])), (node.name, o)
    assert producer[proto.graph.output[0].name].op_type != "DequantizeLinear"

    # A fresh machine (no artifact cache, so no QAT checkpoint) with the results folder: the stored
    # QAT cells stand, rather than a new fine-tuning made only to measure them again.
    again = _bench(["--model", "yolov5n", "--data", "coco", "--data-root", str(det_data), "--weights", str(det_weights),
                    "--input-size", "128x128", "--quant", "qat", "--backend", "torch", "onnxruntime",
                    "--max-images", "2", "--qat-epochs", "1", *FAST], tmp_path, tmp_path / "fresh-artifacts")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "fine-tuning" not in again.stderr and again.stderr.count("is not cached here") == 2, again.stderr[-3000:]
    assert len(_records(tmp_path)) == len(recs)


def test_trains_quick_detector_when_missing_then_reuses_it(det_data, tmp_path):
    artifacts = tmp_path / "artifacts"
    args = ["--model", "yolov5n", "--data", "coco", "--data-root", str(det_data), "--backend", "onnxruntime",
            "--input-size", "128x128", "--train-epochs", "1", *FAST]
    first = _bench(args, tmp_path, artifacts)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "training one with the quick recipe" in first.stderr
    best = artifacts / "checkpoints" / "yolov5n" / "coco" / "quick" / "best.pt"
    assert best.is_file()
    (rec,) = _records(tmp_path)
    assert rec["status"] == "ok" and rec["weights"]["path"] == str(best) and rec["metrics"]["map50_95"] is not None
    second = _bench(args, tmp_path, artifacts)
    assert second.returncode == 0 and "quick recipe" not in second.stderr and "stored (ok" in second.stderr


def test_official_yolov5n_onnxruntime_matches_torch(tmp_path):
    weights = shared_or_skip("weights", "yolov5n.pt")
    data = shared_or_skip("data", "coco-tiny")
    res = _bench(["--model", "yolov5n", "--data", "coco", "--data-root", str(data), "--weights", str(weights),
                  "--input-size", "320x320", "--max-images", "8", "--backend", "torch", "onnxruntime", *FAST],
                 tmp_path, tmp_path / "artifacts")
    assert res.returncode == 0, res.stderr[-3000:]
    recs = {r["backend"]: r for r in _records(tmp_path)}
    torch_m, ort_m = recs["torch"]["metrics"], recs["onnxruntime"]["metrics"]
    assert torch_m["map50_95"] > 0.1 and torch_m["map50"] > torch_m["map50_95"]
    assert abs(ort_m["map50_95"] - torch_m["map50_95"]) <= 0.005
    assert abs(ort_m["map50"] - torch_m["map50"]) <= 0.01
    assert ort_m["box_agreement"] >= 0.97 and ort_m["box_mean_iou_vs_ref"] >= 0.98


# ---------------------------------------------------------------------------------------------
# units (in process)


@pytest.mark.parametrize("shape,size", [((96, 128), 128), ((480, 640), 320), ((427, 640), 640), ((200, 150), 160),
                                        ((64, 64), 64), ((33, 517), 96)])
def test_letterbox_matches_zoo_square_letterbox(shape, size):
    from bench.imageops import letterbox, unletterbox_boxes
    from zoo.data.letterbox import eval_letterbox
    from zoo.det.postprocess import scale_boxes

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(*shape, 3), dtype=np.uint8)
    ours, info = letterbox(image, (size, size))
    ref, ref_info = eval_letterbox(image, size, rect=False)
    assert np.array_equal(ours, ref)
    assert info.gain == ref_info.gain and info.offset == ref_info.offset and info.orig_shape == ref_info.orig_shape
    boxes = rng.uniform(-10, size + 10, size=(20, 4)).astype(np.float32)
    boxes[:, 2:] = boxes[:, :2] + np.abs(boxes[:, 2:] - boxes[:, :2])
    import torch

    expected = scale_boxes(torch.from_numpy(boxes.copy()), ref_info).numpy()
    np.testing.assert_allclose(unletterbox_boxes(boxes, info), expected, rtol=1e-6, atol=1e-4)


def test_letterbox_non_square_fits():
    from bench.imageops import letterbox

    out, info = letterbox(np.zeros((480, 640, 3), np.uint8), (384, 640))
    assert out.shape == (384, 640, 3) and info.gain[0] == pytest.approx(0.8) and info.offset == (0, 64)


def test_box_agreement_hand_made():
    from bench.metrics import BoxAgreement, box_iou

    assert box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10]])[0, 0] == pytest.approx(50 / 150)
    # boxes clipped flat at a border: equal ones agree, different ones do not
    assert box_iou([[0, 5, 0, 9], [0, 5, 0, 9]], [[0, 5, 0, 9], [0, 6, 0, 9]]).tolist() == [[1.0, 0.0], [1.0, 0.0]]
    ref = np.array([[0, 0, 10, 10, 0.9, 1], [20, 20, 30, 30, 0.8, 2], [50, 50, 60, 60, 0.7, 1]])
    dets = np.array([[0, 0, 10, 11, 0.88, 1],   # matches ref 0 (IoU 10/11)
                     [20, 20, 30, 30, 0.81, 3],  # same place, other class: no match
                     [51, 50, 61, 60, 0.6, 1],   # matches ref 2 (IoU 90/110)
                     [80, 80, 90, 90, 0.5, 1]])  # extra box
    a = BoxAgreement()
    a.update(dets, ref)
    a.update(np.zeros((0, 6)), np.zeros((0, 6)))
    d = a.as_dict()
    assert d["matched"] == 2 and d["ref_boxes"] == 3 and d["boxes"] == 4
    assert d["f1"] == pytest.approx(4 / 7) and d["recall"] == pytest.approx(2 / 3) and d["precision"] == 0.5
    assert d["mean_iou"] == pytest.approx((10 / 11 + 90 / 110) / 2)
    empty = BoxAgreement()
    empty.update(np.zeros((0, 6)), np.zeros((0, 6)))
    assert empty.as_dict()["f1"] is None
    # one reference box, two candidates: the higher IoU one is taken, once
    b = BoxAgreement()
    b.update(np.array([[0, 0, 10, 12, 0.5, 0], [0, 0, 10, 10, 0.4, 0]]), np.array([[0, 0, 10, 10, 0.9, 0]]))
    assert b.as_dict()["matched"] == 1 and b.as_dict()["mean_iou"] == 1.0


def test_detection_sizes_and_checks():
    from bench.runner import BenchConfig, _check, default_sizes
    from zoo.data import load_card
    from zoo.errors import UsageError

    cfg = BenchConfig(models=["yolov5n"], data="coco")
    assert default_sizes(cfg, load_card("coco")) == [(640, 640)]
    assert default_sizes(BenchConfig(models=["yolov5n"], data="synthetic-det"), load_card("synthetic-det")) == [(480, 480)]
    assert default_sizes(BenchConfig(models=["yolov5n"], data="coco", input_hw=(320, 320)), load_card("coco")) == [(320, 320)]
    with pytest.raises(UsageError, match="multiples of 32"):
        _check(cfg, [(100, 100)], [1], "detection")
    _check(cfg, [(100, 100)], [1], "segmentation")


def test_missing_detector_checkpoint_without_trainer_is_one_line(tmp_path, monkeypatch):
    from bench.runner import BenchConfig, _check_det_trainer
    from zoo.errors import UsageError
    from zoo.registry import get_entry

    monkeypatch.setitem(sys.modules, "zoo.det.train", None)  # as if the trainer did not exist
    cfg = BenchConfig(models=["yolov5n"], data="coco", artifacts=str(tmp_path))
    with pytest.raises(UsageError, match="pass --weights PATH") as exc:
        _check_det_trainer(cfg, get_entry("yolov5n"))
    assert "\n" not in str(exc.value)

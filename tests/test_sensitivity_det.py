"""quant.sensitivity for detectors (issue #7): COCO mAP50-95 scoring, a held-out part of the training
split for the search (disjoint from calibration), and the mixed-precision list reused by bench.run
(--keep-float-from). Tiny COCO-format fixture at 128x128 with the seeded, head-biased yolov5n of
tests/test_bench_det.py (its mAP is tiny but not zero: the test checks the machinery, not accuracy)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from quant.calibrate import QuantError
from zoo.errors import UsageError
from tests.test_bench_det import FAST, _bench, _records, det_weights, write_coco_split  # noqa: F401 (fixture)

SIZE = ["--input-size", "128", "128"]


@pytest.fixture(scope="module")
def det_train_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco-sens")
    write_coco_split(root, "train", 28, seed=1)  # 40 % held out: 11 score, 17 calibrate (>= 16)
    write_coco_split(root, "val", 4, seed=2)
    return root


@pytest.fixture(scope="module")
def sens_report(det_train_data, det_weights, tmp_path_factory) -> Path:
    """One CLI run: target 1.0 x FP32 held-out mAP with minmax calibration."""
    from quant.sensitivity import main

    out = tmp_path_factory.mktemp("sens-out")
    assert main(["--model", "yolov5n", "--data", "coco", "--data-root", str(det_train_data), "--weights",
                 str(det_weights), *SIZE, "--target-retention", "1.0", "--calib-method", "minmax",
                 "--out", str(out), "--top", "3"]) == 0
    return out / "yolov5" / "sensitivity.json"


def test_detection_search_scores_map_on_held_out_train_images(sens_report, capsys):
    rep = json.loads(sens_report.read_text())
    assert rep["task"] == "detection" and rep["metric"] == "map50_95" and rep["input_hw"] == [128, 128]
    assert isinstance(rep["kept_float"], list) and all(isinstance(n, str) for n in rep["kept_float"])
    assert np.isfinite(rep["score"]) and rep["fp32_score"] > 0 and 0 <= rep["all_int8_score"] <= 1
    assert [s["float_layers"] for s in rep["steps"]][0] == 0
    # the layers in float are the cheapest set tried that reached the goal (fewest float weights,
    # then fewest layers): whole families or a prefix of the ranking, real nodes of the graph
    steps = rep["steps"]
    chosen = next(s for s in steps if s["float_layers"] == len(rep["kept_float"]) and s["score"] == rep["score"])
    hits = [s for s in steps if s["score"] >= rep["target_retention"] * rep["fp32_score"]]
    if hits:
        assert (chosen["float_weight_params"], chosen["float_layers"]) == min(
            (s["float_weight_params"], s["float_layers"]) for s in hits)
    ranked = [e["node"] for e in rep["top_layers"]]
    assert chosen["how"].startswith("families") or rep["kept_float"] == ranked[:len(rep["kept_float"])]
    images = rep["images"]
    assert images["search_on"] == "train-holdout"
    cal, search = images["calibration"], images["search"]
    assert (cal["split"], search["split"], cal["count"], search["count"]) == ("train", "train", 17, 11)
    assert not set(cal["names"]) & set(search["names"]) and len(set(cal["names"]) | set(search["names"])) == 28
    # the INT8 artifact's sidecar records the same search, metric and images
    side = json.loads(Path(rep["int8_path"]).with_suffix(".json").read_text())
    assert side["mixed_precision"]["kept_float"] == rep["kept_float"]
    assert side["mixed_precision"]["metric"] == "map50_95" and side["mixed_precision"]["images"] == images
    assert set(rep["kept_float"]) <= set(side["nodes_to_exclude"])
    assert side["calibration"]["sha256"] == cal["sha256"] and side["calibration"]["size"] == 17


def test_holdout_split_is_disjoint_seeded_and_val_mode_keeps_the_calibration_rule(det_train_data):
    from quant.sensitivity import split_train
    from zoo.data import build_dataset

    ds = build_dataset("coco", root=det_train_data, split="train")
    cal, held = split_train(ds, calib_images=256, holdout_fraction=0.4, max_images=None, seed=0)
    assert (len(cal), len(held)) == (17, 11) and not set(cal) & set(held)
    assert split_train(ds, calib_images=256, holdout_fraction=0.4, max_images=None, seed=0) == (cal, held)
    assert split_train(ds, calib_images=256, holdout_fraction=0.4, max_images=None, seed=1) != (cal, held)
    cal8, held4 = split_train(ds, calib_images=8, holdout_fraction=0.4, max_images=4, seed=0)
    assert len(cal8) == 8 and set(cal8) <= set(cal) and held4 == held[:4]
    # --search-on val: no hold-out; build_calibration's seeded choice (all images when fewer)
    assert split_train(ds, calib_images=256, holdout_fraction=0.0, max_images=None, seed=0) == (list(range(28)), [])
    picks = np.random.default_rng(0).choice(28, size=20, replace=False)
    assert split_train(ds, calib_images=20, holdout_fraction=0.0, max_images=None, seed=0)[0] == sorted(int(p) for p in picks)
    with pytest.raises(QuantError, match="holding out"):
        split_train(ds, calib_images=256, holdout_fraction=0.9, max_images=None, seed=0)


def test_search_with_map_scorer_returns_float_layers(sens_report, det_train_data, tmp_path):
    """A goal above what any model reaches: the search walks 0, 1, 2 float layers (max_float=2) and
    returns the best, with the detection scorer in the loop."""
    from quant.sensitivity import onnx_map, search_mixed_precision, split_train, subset_calibration
    from zoo.data import Preprocess, build_dataset, load_card
    from zoo.data.letterbox import DetEvalTransform

    rep = json.loads(sens_report.read_text())
    fp32 = Path(rep["fp32_path"])
    ds = build_dataset("coco", root=det_train_data, split="train")
    cal, held = split_train(ds, calib_images=16, holdout_fraction=0.4, max_images=4, seed=0)
    tf = DetEvalTransform(Preprocess.from_card(load_card("coco")), 128, rect=False)
    calib = subset_calibration(ds, cal, lambda s: tf(s)[0].numpy()[None], dataset="coco", seed=0,
                               input_hw=(128, 128), preprocess={"letterbox": "square"}, requested=16)
    sub = build_dataset("coco", root=det_train_data, split="train", transform=tf)
    sub.images = [sub.images[i] for i in held]
    result = search_mixed_precision(fp32, tmp_path / "mixed.onnx", calib, lambda p: onnx_map(p, sub, threads=1),
                                    fp32_score=10.0, target_retention=1.0, method="minmax", max_float=2,
                                    metric="map50_95", log=lambda m: None)
    assert [s["float_layers"] for s in result.steps if not s["how"].startswith("families")] == [0, 1, 2]
    assert all(s["float_layers"] <= 2 for s in result.steps)  # max_float bounds the family stage too
    assert len(result.kept_float) in (0, 1, 2) and result.metric == "map50_95"
    assert all(0 <= s["score"] <= 1 for s in result.steps) and result.score == max(s["score"] for s in result.steps)


def test_keep_float_list_must_name_nodes_of_the_graph(sens_report, tmp_path):
    from quant.ptq_static import quantize_static_onnx
    from quant.sensitivity import kept_float_from

    rep = json.loads(sens_report.read_text())
    assert kept_float_from(sens_report) == rep["kept_float"]
    assert kept_float_from(Path(rep["int8_path"]).with_suffix(".json")) == rep["kept_float"]
    from quant.sensitivity import searched_calib_method

    assert searched_calib_method(sens_report) == searched_calib_method(Path(rep["int8_path"]).with_suffix(".json")) == "minmax"
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(QuantError, match="not a sensitivity report"):
        kept_float_from(tmp_path / "list.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(QuantError, match="kept_float"):
        kept_float_from(tmp_path / "bad.json")
    from quant.calibrate import CalibrationData

    calib = CalibrationData(arrays=[np.random.default_rng(0).random((1, 3, 128, 128), np.float32)] * 16,
                            names=[str(i) for i in range(16)], sha256="x", dataset="coco", split="train", seed=0,
                            input_hw=(128, 128))
    with pytest.raises(QuantError, match="not in the pre-processed graph"):
        quantize_static_onnx(rep["fp32_path"], tmp_path / "x.onnx", calib, method="minmax",
                             nodes_to_exclude=["/no/such/Conv"])


def test_bench_static_cell_keeps_the_reported_layers_in_float(sens_report, det_train_data, det_weights, tmp_path):
    """bench.run --keep-float-from: the static ORT artifact leaves the sensitivity run's layers float,
    and its key and record say so."""
    from bench.run import build_parser, config_from_args
    from bench.runner import quant_config, run_sweep

    rep = json.loads(sens_report.read_text())
    kept = ["/model.0/conv/Conv", "/model.2/m/m.0/cv1/conv/Conv"]  # a fixed list, whatever the search kept
    report = tmp_path / "sens.json"
    report.write_text(json.dumps({**rep, "kept_float": kept}))
    args = ["--model", "yolov5n", "--data", "coco", "--data-root", str(det_train_data), "--weights", str(det_weights),
            "--input-size", "128x128", "--quant", "static", "--backend", "onnxruntime", "--keep-float-from",
            str(report), *FAST]
    # The report was searched with minmax; a detector's ONNX default (percentile) is refused, one line.
    assert rep["calib_method"] == "minmax"
    # The Python API refuses it too, before any work (the check lives in the sweep's validation).
    with pytest.raises(UsageError, match="searched with minmax calibration but .* percentile; pass --calib-method minmax"):
        run_sweep(config_from_args(build_parser().parse_args(args)), log=lambda m: None)
    res = _bench(args, tmp_path, tmp_path / "artifacts")
    assert res.returncode == 2 and "--calib-method minmax" in res.stderr and res.stderr.count("\n") == 1
    args += ["--calib-method", "minmax"]
    cfg = config_from_args(build_parser().parse_args(args))
    assert "-float2-" in quant_config(cfg, "static", "onnxruntime")
    assert "float" not in quant_config(cfg, "static", "torch")  # PyTorch FX PTQ does not take the list
    res = _bench(args, tmp_path, tmp_path / "artifacts")
    assert res.returncode == 0, res.stderr[-3000:]
    (rec,) = [r for r in _records(tmp_path) if r["variant"] == "static"]
    assert rec["status"] == "ok", rec.get("error")
    assert "-float2-" in rec["quant_config"]
    assert rec["artifact"]["quant"]["kept_float"] == {"from": str(report), "nodes": kept}
    q = onnx.load(rec["artifact"]["path"])
    dq_out = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = {n.name: n for n in q.graph.node if n.op_type == "Conv"}
    for name in kept:  # a float conv: its weight is a plain initializer, not a DequantizeLinear output
        assert convs[name].input[1] not in dq_out
    assert any(n.input[1] in dq_out for n in convs.values())


# ---------------------------------------------------------------------------------------------
# segmentation keeps mIoU; its held-out split and the old validation mode


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory) -> Path:
    from tests.conftest import write_segnet_split

    root = tmp_path_factory.mktemp("camvid-sens")
    write_segnet_split(root, "train", 30, seed=1)
    write_segnet_split(root, "val", 3, seed=2)
    return root


def test_val_mode_calibration_is_build_calibrations_set(seg_data):
    """--search-on val calibrates on exactly the images (and hash) of quant.calibrate.build_calibration."""
    from quant.calibrate import build_calibration
    from quant.sensitivity import split_train, subset_calibration
    from zoo.data import EvalTransform, Preprocess, build_dataset, load_card

    pre = Preprocess.from_card(load_card("camvid"))
    ref = build_calibration("camvid", root=seg_data, num_images=20, seed=0, preprocess=pre, input_hw=(64, 64))
    ds = build_dataset("camvid", root=seg_data, split="train")
    tf = EvalTransform(pre, size=(64, 64))
    cal, held = split_train(ds, calib_images=20, holdout_fraction=0.0, max_images=None, seed=0)
    mine = subset_calibration(ds, cal, lambda s: tf(s)[0].numpy()[None], dataset="camvid", seed=0,
                              input_hw=(64, 64), preprocess=pre.to_dict(), requested=20)
    assert held == [] and mine.names == ref.names and mine.sha256 == ref.sha256


def test_segmentation_cli_scores_miou_on_held_out_train_images(seg_data, tmp_path, capsys):
    from quant.sensitivity import main

    assert main(["--model", "ddrnet", "--data", "camvid", "--data-root", str(seg_data), "--weights", "random",
                 *SIZE[:1], "64", "64", "--calib-method", "minmax", "--out", str(tmp_path), "--top", "3"]) == 0
    out = capsys.readouterr()
    assert "miou on 12 camvid/train images held out from the 18 calibration images" in out.out
    (rep_path,) = tmp_path.glob("*/sensitivity.json")
    rep = json.loads(rep_path.read_text())
    assert rep["metric"] == "miou" and rep["task"] == "segmentation" and rep["kept_float"] == []
    assert (rep["images"]["calibration"]["count"], rep["images"]["search"]["count"]) == (18, 12)
    assert len(rep["top_layers"]) > 10

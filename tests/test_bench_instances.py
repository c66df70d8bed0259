"""bench.run on instance networks (issue #10 part 5): PQ cells, parity with the FP32 reference,
the planner's one-line errors, and the scoring pieces on hand-made arrays."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO

CAR, ROAD = 8, 3


# ---------------------------------------------------------------------------------------------
# scoring and post-processing on hand-made arrays


def _two_cars():
    label = np.full((30, 40), ROAD, np.uint8)
    ids = np.zeros((30, 40), np.int32)
    ids[5:15, 5:15], ids[15:25, 25:35] = 1, 2
    label[ids > 0] = CAR
    return label, ids, np.array([-1, CAR, CAR])


def test_instance_scores_pq_and_agreement_hand_computed():
    from bench.instances import InstanceScores

    label, gt, gt_cls = _two_cars()
    pred = gt.copy()
    pred[15:25, 30:35] = 0                # car 2 found on half its pixels: IoU 0.5 is no match
    touching = np.zeros(3, bool)
    s = InstanceScores(11, 255, (CAR, 9), [str(c) for c in range(11)])
    # the reference found both cars exactly; the cell: one exact (TP, IoU 1), one half (FP + FN)
    s.add(label, pred, gt_cls, label, gt, gt_cls, touching, ref=(label, gt, gt_cls))
    m, a = s.as_dict(), s.agreement()
    assert m["pq"] == pytest.approx(0.5) and m["sq"] == pytest.approx(1.0) and m["rq"] == pytest.approx(0.5)
    assert m["pq_counts"] == {"tp": 1, "fp": 1, "fn": 1} and m["instances"] == 2
    assert m["pq_touching"] is None       # no touching ground truth: nothing counted, no NaN in the record
    assert m["pixel_accuracy"] == 1.0
    # vs the reference: the same split as against the ground truth, pooled over classes
    assert a["pixel_agreement"] == 1.0 and a["instance_agreement"] == pytest.approx(0.5)
    assert a["instance_match_f1"] == pytest.approx(0.5) and a["instance_match_iou"] == pytest.approx(1.0)
    # identical to the reference: agreement exactly 1; a merged pair: 0
    same = InstanceScores(11, 255, (CAR,))
    same.add(label, gt, gt_cls, label, gt, gt_cls, touching, ref=(label, gt, gt_cls))
    assert same.agreement()["instance_agreement"] == 1.0
    merged = InstanceScores(11, 255, (CAR,))
    merged.add(label, (gt > 0).astype(np.int32), np.array([-1, CAR]), label, gt, gt_cls, touching,
               ref=(label, gt, gt_cls))
    assert merged.agreement()["instance_agreement"] == 0.0 and merged.as_dict()["pq"] == 0.0
    # without a reference there is no parity to report
    assert InstanceScores(11, 255, (CAR,)).agreement()["instance_agreement"] is None


def test_instances_from_output_groups_by_centres_and_offsets():
    from zoo.instances.postprocess import GroupConfig, instances_from_output, panoptic_instances

    label, gt, _ = _two_cars()
    label[gt == 2] = CAR
    label[15, 5:15] = CAR                  # the two cars touch through this row: one component
    c = 11
    out = np.zeros((c + 3, 30, 40), np.float32)
    out[ROAD] = 1.0
    out[CAR][label == CAR] = 5.0
    yy, xx = np.mgrid[0:30, 0:40]
    centres = {1: (10, 10), 2: (20, 30)}
    for k, (cy, cx) in centres.items():
        out[c] = np.maximum(out[c], np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8))
    owner = np.where(xx < 20, 1, 2)
    out[c + 1] = np.where(owner == 1, 10 - yy, 20 - yy)
    out[c + 2] = np.where(owner == 1, 10 - xx, 30 - xx)
    sem, ids, cls, score = instances_from_output(out, c, [CAR], GroupConfig())
    assert (sem == label).all() and ids.max() == 2 and list(cls) == [-1, CAR, CAR] and score[1:].min() > 0.9
    assert ids[10, 10] != ids[20, 30] and ids[15, 5] == ids[10, 10]
    ref_ids, _, _ = panoptic_instances(label, out[c], out[c + 1:], [CAR], GroupConfig())
    assert (ids == ref_ids).all()
    with pytest.raises(ValueError, match="expected a"):
        instances_from_output(out[:-1], c, [CAR])


@pytest.mark.parametrize("hw", [(17, 23), (60, 80)])
def test_resized_ids_stay_aligned_with_resized_labels(hw):
    from bench.imageops import resize_label
    from bench.instances import resize_ids
    from zoo.instances.pseudo import connected_components

    rng = np.random.default_rng(0)
    label = rng.choice([ROAD, CAR, 9], size=(30, 40), p=[0.5, 0.3, 0.2]).astype(np.uint8)
    ids, classes = connected_components(label, [CAR, 9])
    assert ids.max() > 20
    small_ids, small_label = resize_ids(ids, hw), resize_label(label, hw)
    on = small_ids > 0
    assert small_ids.shape == hw and (classes[small_ids[on]] == small_label[on]).all()
    assert ((small_label != ROAD) == on).all()


def test_fx_int8_keeps_the_output_layers_float():
    """PyTorch static INT8 (FX) must not quantize the heads' output convs and their concat: one
    8-bit scale shared by logits, heat and offsets flattens the centre heat map."""
    import torch

    from quant import fx_quant
    from tests.conftest import calibrate_bn
    from zoo.instances.net import PanopticLite, output_layers

    torch.manual_seed(0)
    model = calibrate_bn(PanopticLite(num_classes=5)).eval()
    prepared = fx_quant.prepare(model, qat=False, input_hw=(64, 64), scheme="affine", reduce_range=True)
    fx_quant.calibrate(prepared, [np.random.default_rng(i).normal(size=(1, 3, 64, 64)).astype(np.float32)
                                  for i in range(2)])
    graph = fx_quant.convert_int8(prepared).graph
    node = next(n for n in graph.nodes if n.op == "call_function" and n.target is output_layers)
    assert [a.target for a in node.args[:3]] == ["dequantize"] * 3       # float inputs
    assert all(a.op == "get_attr" for a in node.args[3] + node.args[4])   # float weights and biases
    assert next(n for n in graph.nodes if n.op == "output").args[0] is node
    assert sum(1 for n in graph.nodes if n.op == "call_module" and "quantized" in str(type(
        dict(graph.owning_module.named_modules())[n.target]))) > 10       # the rest is INT8


# ---------------------------------------------------------------------------------------------
# planning: instance sweeps and their one-line errors


def _cfg(**kw):
    from bench.runner import BenchConfig

    return BenchConfig(**{"models": ["panoptic_lite"], "variants": ["fp32,static"], "backends": ["torch,onnxruntime"],
                          "data": "synthetic", **kw})


def test_planner_accepts_commas_and_rejects_unsupported_combinations():
    from bench.runner import _planned, _task
    from zoo.errors import UsageError

    assert _task(_cfg()) == "instance" and _task(_cfg(models=["ddrnet"])) == "segmentation"
    assert _planned(_cfg()) == (["panoptic_lite_fastdepthseg"], ["fp32", "static"], ["torch", "onnxruntime"])
    assert _planned(_cfg(variants=["all"]))[1] == ["fp32", "static", "dynamic"]
    for kw, message in [({"variants": ["qat"]}, "QAT for instance networks"),
                        ({"data": "camvid"}, "has no instance ids"),
                        ({"data": "coco"}, "is a detection dataset"),
                        ({"models": ["panoptic_lite", "ddrnet"]}, "measure them in a separate run")]:
        with pytest.raises(UsageError, match=message):
            _planned(_cfg(**kw))


def test_instance_table_shows_pq():
    from bench.runner import markdown_table

    rec = {"task": "instance", "model": "panoptic_lite_fastdepthseg", "variant": "static", "backend": "onnxruntime",
           "status": "ok", "metrics": {"pq": 0.4123, "sq": 0.75, "rq": 0.55, "pq_touching": 0.2, "miou": 0.6,
                                       "pixel_agreement": 0.99, "instance_agreement": 0.9},
           "latency_ms": {"median": 20.0, "p90": 22.0, "cv": 0.05}, "e2e_latency_ms": {"median": 45.0},
           "postprocess_latency_ms": {"median": 21.0}, "fps": 50.0, "size_mb": 1.5}
    table = markdown_table([rec])
    assert "PQ %" in table and " 41.23 |" in table and "inst agree %" in table and "mIoU %" in table


def test_footer_says_what_instance_end_to_end_covers():
    from bench.runner import BenchConfig, footer

    env = {"cpu": {"model": "cpu"}, "torch": "t", "onnxruntime": "o", "git": {"commit": "abc", "dirty": False}}
    rec = {"task": "instance", "env": env, "input_hw": [64, 96], "batch": 1, "profile_id": "quick"}
    text = footer(BenchConfig(models=["panoptic_lite"]), [rec])
    assert "e2e = resize+normalise+model+post" in text and "centre NMS+grouping" in text
    assert "argmax" in footer(BenchConfig(models=["ddrnet"]), [{**rec, "task": "segmentation"}])


def test_timing_fields_are_the_same_for_every_cell_kind():
    from bench.cell import e2e_profile_of, timing_fields
    from bench.timing import PROFILES

    class Backend:
        def info(self):
            return {"providers": ["X"]}

    profile = PROFILES["quick"]
    model = {"stats": {"median": 2.0}, "samples_ms": [2.0]}
    e2e = {"stats": {"median": 5.0}, "samples_ms": [5.0]}
    spec = {"timing_profile": {"name": "quick"}}
    plain = timing_fields(spec, Backend(), model, e2e, e2e_profile_of(profile), [])
    assert plain == {"latency_ms": {"median": 2.0}, "samples_ms": [2.0], "e2e_latency_ms": {"median": 5.0},
                     "e2e_samples_ms": [5.0], "gpu_compute_ms": None, "timing_profile": {"name": "quick"},
                     "e2e_timing_profile": e2e_profile_of(profile).__dict__, "gpu_memory": None,
                     "runtime": {"providers": ["X"]}, "imports_torch": "torch" in sys.modules}
    assert plain["e2e_timing_profile"]["warmup_iters"] == 1 and plain["e2e_timing_profile"]["name"] == "quick-e2e"
    split = timing_fields(spec, Backend(), model, e2e, e2e_profile_of(profile), [1.0, 1.5], [0.5], [3.0])
    assert split["postprocess_samples_ms"] == [3.0] and split["postprocess_latency_ms"]["median"] == 3.0
    assert split["preprocess_latency_ms"]["median"] == 0.5 and split["gpu_compute_ms"]["n"] == 2
    assert set(split) - set(plain) == {"postprocess_latency_ms", "postprocess_samples_ms", "preprocess_latency_ms"}


def test_ort_backend_applies_and_records_session_config(tmp_path):
    """Instance cells stop ONNX Runtime's spinning workers when a run returns (ORT_SESSION_CONFIG);
    other cells keep the defaults and record nothing."""
    import onnx
    from onnx import TensorProto, helper

    from bench.backends.onnxruntime import OrtBackend
    from bench.instances import ORT_SESSION_CONFIG

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    stop = OrtBackend()
    stop.load({"path": str(path)}, threads=2, options={"ort_session_config": ORT_SESSION_CONFIG})
    assert stop.session.get_session_options().get_session_config_entry("session.force_spinning_stop") == "1"
    assert stop.info()["session_config"] == {"session.force_spinning_stop": "1"}
    assert (stop.infer(-np.ones((1, 3, 4, 4), np.float32)) == 0).all()
    default = OrtBackend()
    default.load({"path": str(path)}, threads=2, options={})
    assert "session_config" not in default.info()


# ---------------------------------------------------------------------------------------------
# end to end (subprocesses): quick training on first use, FP32 and static INT8 on two backends


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory):
    from zoo.data import build_dataset

    cache = tmp_path_factory.mktemp("inst-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEZOO_CACHE", str(cache))
        ds = build_dataset("synthetic", split="val", num_images={"train": 16, "val": 3, "test": 1}, size=(64, 96),
                           progress=False)
    return ds.root


def _bench(args, tmp_path, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEZOO_ARTIFACTS": str(tmp_path / "artifacts"),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bench.run", *args, "--out", str(tmp_path / "results")],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


def test_instance_sweep_fp32_and_static_on_torch_and_onnxruntime(tiny_synthetic, tmp_path):
    import onnx

    from zoo.instances.postprocess import GroupConfig

    args = ["--model", "panoptic_lite", "--data", "synthetic", "--data-root", str(tiny_synthetic),
            "--quant", "fp32,static", "--backend", "torch,onnxruntime", "--input-size", "64", "96",
            "--train-epochs", "1", "--calib-images", "16", "--calib-method", "minmax",
            "--iters", "3", "--warmup", "1", "--threads", "1", "--no-progress"]
    first = _bench(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "training one with the quick recipe" in first.stderr and "instances in a separate process" in first.stderr
    assert (tmp_path / "artifacts" / "checkpoints" / "panoptic_lite_fastdepthseg" / "synthetic" / "quick-seed0"
            / "best.pt").is_file()
    assert " PQ % |" in first.stdout and "| panoptic_lite_fastdepthseg | static" in first.stdout
    recs = {(r["variant"], r["backend"]): r for r in
            (json.loads(p.read_text()) for p in (tmp_path / "results").glob("*.json"))}
    assert set(recs) == {("fp32", "torch"), ("fp32", "onnxruntime"), ("static", "torch"), ("static", "onnxruntime")}
    for key, r in recs.items():
        assert r["status"] == "ok", (key, r["error"])
        assert r["task"] == "instance" and r["images"] == 3 and r["input_hw"] == [64, 96]
        m = r["metrics"]
        for k in ("pq", "sq", "rq", "miou", "pixel_agreement", "instance_match_f1"):
            assert m[k] is None or 0.0 <= m[k] <= 1.0, (key, k, m[k])
        assert m["pq"] is not None and m["pq_counts"]["fn"] + m["pq_counts"]["tp"] > 0  # ground truth was scored
        assert m["pixel_agreement"] is not None and m["pq_delta_vs_fp32_torch"] is not None
        assert r["reference"]["status"] == "ok" and "pq" in r["reference"]
        assert 0 < r["postprocess_latency_ms"]["median"] < r["e2e_latency_ms"]["median"]
        assert r["postprocess_latency_ms"]["n"] == r["e2e_latency_ms"]["n"] == len(r["postprocess_samples_ms"])
        assert r["protocol"]["e2e"].endswith("centre NMS + grouping") and r["postprocess"]["group"] == GroupConfig().as_dict()
        assert r["peak_rss_mb"] > 0 and r["size_mb"] > 0
    fp32 = recs[("fp32", "torch")]["metrics"]
    # the FP32 cell is the reference, run again: identical semantics and instances
    assert fp32["pixel_agreement"] == 1.0 and fp32["pq_delta_vs_fp32_torch"] == 0.0
    assert fp32["instance_agreement"] in (1.0, None)
    assert recs[("fp32", "onnxruntime")]["metrics"]["pixel_agreement"] > 0.99
    assert recs[("fp32", "onnxruntime")]["imports_torch"] is False   # post-processing is numpy / scipy
    for (variant, backend), r in recs.items():   # ORT workers stop spinning between runs (post-processing)
        assert r["runtime"].get("session_config") == ({"session.force_spinning_stop": "1"}
                                                       if backend == "onnxruntime" else None), (variant, backend)
    # static INT8 on ONNX Runtime: the three head convs, their concat and the upsampling stay float
    static = recs[("static", "onnxruntime")]
    kept = static["float_head"]["nodes"]
    assert static["float_head"]["float_head"] is True
    proto = onnx.load(static["artifact"]["path"])
    producer = {o: n for n in proto.graph.node for o in n.output}
    resize = producer[proto.graph.output[0].name]
    concat = producer[resize.input[0]]
    head = [producer[i] for i in concat.input]          # semantic, centre and offset 1x1 convs
    assert resize.op_type == "Resize" and concat.op_type == "Concat" and [n.op_type for n in head] == ["Conv"] * 3
    assert {resize.name, concat.name, *(n.name for n in head)} <= set(kept)
    assert all(producer.get(n.input[1]) is None for n in head)    # float weights (no DequantizeLinear)
    assert static["artifact"]["quant"]["graph"]["quantized_convs"] > 10
    assert static["size_mb"] < 0.5 * recs[("fp32", "onnxruntime")]["size_mb"]
    fx = recs[("static", "torch")]
    assert fx["float_head"]["float_head"] is True and "output_layers" in fx["float_head"]["nodes"][0]
    assert fx["artifact"]["fx_int8"]["mode"] == "ptq" and recs[("fp32", "torch")]["float_head"] is None

    # rerun: the checkpoint is found (no training), every ok cell is reused
    second = _bench(args, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "training" not in second.stderr and second.stderr.count("stored (ok") == 4

    # tuned grouping next to the checkpoint (zoo.instances.tune --write): a new cell identity, a new
    # reference (its instances depend on the grouping) and the settings in the record
    from zoo.io import write_json

    best = tmp_path / "artifacts" / "checkpoints" / "panoptic_lite_fastdepthseg" / "synthetic" / "quick-seed0" / "best.pt"
    tuned = GroupConfig(threshold=0.3, nms_kernel=3, split_components=False, min_votes=0)
    write_json(best.with_name("best.group.json"), {"group": tuned.as_dict(), "tuned": {"split": "val"}})
    fp32_args = [a if a != "fp32,static" else "fp32" for a in args]
    third = _bench(fp32_args, tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "grouping: tuned settings of" in third.stderr and "stored (ok" not in third.stderr
    assert "instances in a separate process" in third.stderr
    new = [r for r in (json.loads(p.read_text()) for p in (tmp_path / "results").glob("*.json"))
           if r.get("postprocess_id") == tuned.digest()]
    assert len(new) == 2 and all(r["postprocess"]["group"] == tuned.as_dict() for r in new)
    assert all(r["protocol"]["postprocess"]["group"] == tuned.as_dict() for r in new)
    assert all(r["postprocess_id"] == GroupConfig().digest() for r in recs.values())

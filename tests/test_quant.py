"""Quantization recipes end to end on tiny networks and tiny calibration data (issue #3, parts 1-3).

Calibration: 16 synthetic 64x96 training images. Networks: DDRNet-23-slim at 64x64 (random
weights, BatchNorm statistics set from the calibration images so activations have realistic
ranges) for the graph structure of each recipe, and a tiny Conv-BN-ReLU net with a residual add,
trained for 40 steps on the same images, for accuracy. A random deep network is no accuracy
check: random DDRNet-23-slim is chaotic (Gaussian input noise of 1% of the input's std already
flips ~23% of its arg-max pixels), so static INT8 flips 35-42% of them whatever the placement,
while the quick-trained DDRNet-23-slim at 360x480 keeps 96-97% of its pixels.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import zoo
from quant.calibrate import (CalibrationData, CalibrationReader, QuantError, build_calibration,
                             calibration_method)
from quant.export import export_onnx
from quant.onnx_inspect import inspect_onnx
from quant.ptq_dynamic import parity, quantize_dynamic_onnx, quantize_dynamic_torch
from quant.ptq_static import (cpu_has_vnni, ort_pre_process, ort_types, output_head_nodes,
                               quantize_static_onnx)
from zoo.data import Preprocess, build_dataset, load_card
from zoo.metrics import ConfusionMatrix

TINY = {"num_images": {"train": 16, "val": 4}, "size": (64, 96), "progress": False}
HW = (64, 64)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    # Same folder the autouse cache fixture points EDGEZOO_CACHE at; given explicitly because a
    # module-scoped fixture runs before that function-scoped one.
    return tmp_path_factory.getbasetemp() / "cache" / "synthetic"


@pytest.fixture(scope="module")
def preprocess() -> Preprocess:
    return Preprocess.from_card(load_card("synthetic"))


def _calib(root, preprocess, **kw) -> CalibrationData:
    args = {"num_images": 16, "seed": 0, "preprocess": preprocess, "input_hw": HW, "dataset_kwargs": TINY}
    args.update(kw)
    return build_calibration("synthetic", root=root, **args)


@pytest.fixture(scope="module")
def calib(synthetic_root, preprocess) -> CalibrationData:
    return _calib(synthetic_root, preprocess)


def _set_bn_stats(model: nn.Module, calib: CalibrationData) -> nn.Module:
    """BatchNorm running statistics = exact mean/var over the calibration images."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass gives the exact statistics
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(np.concatenate(calib.arrays)))
    return model.eval()


@pytest.fixture(scope="module")
def ddrnet_onnx(tmp_path_factory, calib) -> Path:
    torch.manual_seed(0)
    model = _set_bn_stats(zoo.build("ddrnet", num_classes=11, aux=False), calib)
    return export_onnx(model, tmp_path_factory.mktemp("ddr") / "fp32.onnx", input_hw=HW)


def _conv_bn(cin: int, cout: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class TinyNet(nn.Module):
    """Conv-BN-ReLU stem, one residual block, 1x1 classifier, bilinear upsampling (like DDRNet's tail)."""

    def __init__(self, classes: int = 11) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 16, 2)
        self.body = nn.Sequential(_conv_bn(16, 16), _conv_bn(16, 16, relu=False))
        self.head = nn.Conv2d(16, classes, 1)

    def forward(self, x):
        y = self.stem(x)
        y = torch.relu(y + self.body(y))
        return nn.functional.interpolate(self.head(y), size=x.shape[-2:], mode="bilinear", align_corners=False)


TINY_HW = (64, 96)


@pytest.fixture(scope="module")
def tiny_calib(synthetic_root, preprocess) -> CalibrationData:
    return _calib(synthetic_root, preprocess, input_hw=TINY_HW)


@pytest.fixture(scope="module")
def tiny_val(synthetic_root, preprocess) -> list[tuple[np.ndarray, np.ndarray]]:
    ds = build_dataset("synthetic", root=synthetic_root, split="val", **TINY)
    return [(preprocess.batch_numpy([s.image]), s.label) for s in (ds.load(i) for i in range(len(ds)))]


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory, tiny_model) -> Path:
    return export_onnx(tiny_model, tmp_path_factory.mktemp("tiny") / "fp32.onnx", input_hw=TINY_HW)


@pytest.fixture(scope="module")
def tiny_model(synthetic_root, preprocess) -> nn.Module:
    """TinyNet trained for 40 full-batch steps on the 16 tiny training images (~3 s)."""
    ds = build_dataset("synthetic", root=synthetic_root, split="train", **TINY)
    samples = [ds.load(i) for i in range(len(ds))]
    x = torch.from_numpy(preprocess.batch_numpy([s.image for s in samples]))
    y = torch.from_numpy(np.stack([s.label for s in samples]).astype(np.int64))
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only add contention on a busy box
    try:
        for _ in range(40):
            loss = nn.functional.cross_entropy(model(x), y, ignore_index=255)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def _miou(path: Path, val) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    conf = ConfusionMatrix(11)
    for x, label in val:
        conf.update(sess.run(None, {"input": x})[0].argmax(1)[0], label)
    return conf.scores().miou


def _runs(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


# --- calibration -----------------------------------------------------------------------------

def test_calibration_arrays_and_metadata(calib):
    assert calib.size == len(calib.names) == 16
    for a in calib.arrays:
        assert a.dtype == np.float32 and a.shape == (1, 3, *HW)
    assert abs(float(np.mean([a.mean() for a in calib.arrays]))) < 1.0  # normalised, not 0-255
    d = calib.as_dict()
    assert {"sha256", "size", "split", "seed", "dataset"} <= set(d)
    assert d["size"] == 16 and d["split"] == "train" and d["dataset"] == "synthetic"
    json.dumps(d)


def test_calibration_hash_stable_for_seed_and_changes_with_it(synthetic_root, preprocess):
    a = _calib(synthetic_root, preprocess, num_images=8, seed=0)
    b = _calib(synthetic_root, preprocess, num_images=8, seed=0)
    c = _calib(synthetic_root, preprocess, num_images=8, seed=1)
    assert a.sha256 == b.sha256 and a.names == b.names
    assert a.names == sorted(a.names)
    assert c.sha256 != a.sha256 and c.names != a.names


def test_calibration_hash_covers_preprocess_and_size(synthetic_root, preprocess, calib):
    bgr = Preprocess(mean=preprocess.mean, std=preprocess.std, bgr=True)
    assert _calib(synthetic_root, bgr).sha256 != calib.sha256
    assert _calib(synthetic_root, preprocess, input_hw=(32, 48)).sha256 != calib.sha256


def test_calibration_reader_feeds_every_array_and_ranges(calib):
    reader = CalibrationReader(calib, "input")
    got = []
    while (item := reader.get_next()) is not None:
        got.append(item["input"])
    assert len(got) == calib.size and got[3] is calib.arrays[3]
    reader.set_range(4, 8)
    assert sum(1 for _ in iter(reader.get_next, None)) == 4
    assert len(reader) == calib.size


def test_calibration_errors(tiny_camvid, tmp_path, preprocess):
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "trainannot").mkdir()
    with pytest.raises(QuantError, match="no images"):
        build_calibration("camvid", root=empty, preprocess=preprocess, input_hw=HW)
    # tiny_camvid has 8 training images
    with pytest.raises(QuantError, match="lower num_images"):
        build_calibration("camvid", root=tiny_camvid, num_images=16, strict=True, preprocess=preprocess, input_hw=HW)
    with pytest.raises(QuantError, match="fewer than the minimum 16"):
        build_calibration("camvid", root=tiny_camvid, num_images=16, preprocess=preprocess, input_hw=HW)
    with pytest.warns(UserWarning, match="using all 8"):
        few = build_calibration("camvid", root=tiny_camvid, num_images=16, min_images=4,
                                preprocess=preprocess, input_hw=HW)
    assert few.size == 8
    with pytest.raises(QuantError, match="not found"):
        build_calibration("camvid", root=tmp_path / "missing", preprocess=preprocess, input_hw=HW)


def test_calibration_methods():
    from onnxruntime.quantization import CalibrationMethod

    assert calibration_method("minmax") == CalibrationMethod.MinMax
    assert calibration_method("Percentile") == CalibrationMethod.Percentile
    assert calibration_method("entropy") == CalibrationMethod.Entropy
    with pytest.raises(QuantError, match="valid methods: minmax, percentile, entropy"):
        calibration_method("kl")


def test_task_default_calibration_method():
    from quant.calibrate import TASK_CALIB_METHODS, resolve_calib_method

    assert resolve_calib_method(None, "detection") == "percentile"  # ONNX Runtime's calibrator
    assert resolve_calib_method(None, "detection", "onnx") == "percentile"
    assert resolve_calib_method(None, "detection", "torch") == "entropy"  # FX observers: measured best
    assert resolve_calib_method(None, "segmentation", "torch") == "entropy"
    assert resolve_calib_method(None, "segmentation") == "percentile"  # ESPNet: 98.2 % against entropy's 94.3 %
    assert resolve_calib_method(None, "instance") == "entropy"  # unlisted tasks keep the former default
    assert resolve_calib_method("MinMax", "detection", "torch") == "minmax"  # a named method always wins
    assert set(TASK_CALIB_METHODS.values()) <= {"minmax", "percentile", "entropy"}
    with pytest.raises(QuantError, match="valid methods: minmax, percentile, entropy"):
        resolve_calib_method("kl", "detection")
    with pytest.raises(ValueError, match="valid: onnx, torch"):
        resolve_calib_method(None, "detection", "tensorrt")


def test_bench_and_api_calibration_default_is_the_tasks():
    """--calib-method unset means the task's method in bench.run, zoo.load and quant.sensitivity, and
    the artifact key names the method on both backends."""
    import inspect

    from bench.run import build_parser as bench_parser
    from bench.runner import BenchConfig, calib_method_of, quant_config
    from quant.sensitivity import build_parser as sensitivity_parser

    assert bench_parser().parse_args(["--model", "yolov5n"]).calib_method is None
    assert "percentile for detection" in " ".join(bench_parser().format_help().split())
    assert sensitivity_parser().parse_args(["--model", "yolov5n"]).calib_method is None
    assert inspect.signature(zoo.load).parameters["calib_method"].default is None
    det = BenchConfig(models=["yolov5n"], data="coco")
    seg = BenchConfig(models=["ddrnet"], data="synthetic")
    assert calib_method_of(det) == "percentile" and calib_method_of(seg) == "percentile"
    assert calib_method_of(det, "torch") == "entropy" and calib_method_of(seg, "torch") == "entropy"
    named = BenchConfig(models=["yolov5n"], data="coco", calib_method="minmax")
    assert calib_method_of(named) == calib_method_of(named, "torch") == "minmax"
    # The default depends on the backend's calibrator, and the artifact key says which was used.
    assert quant_config(det, "static", "torch").startswith("fx-entropy-")
    assert quant_config(det, "static", "onnxruntime").startswith("ort-bnconv-percentile-")
    assert quant_config(det, "static", "tensorrt").startswith("trt-percentile-")
    keys = {quant_config(BenchConfig(models=["ddrnet"], calib_method=m), "static", "torch")
            for m in ("minmax", "percentile", "entropy")}
    assert len(keys) == 3  # artifacts made with different methods never share a file


# --- graph inspection ------------------------------------------------------------------------

def test_inspect_fp32(tiny_onnx):
    g = inspect_onnx(tiny_onnx)
    assert g["convs"] == g["float_convs"] == 4 and g["quantized_convs"] == 0
    assert g["quantize_linear"] == g["dequantize_linear"] == 0 and g["zero_points_all_zero"] is None
    assert g["initializer_bytes"]["int8"] == 0 and g["file_bytes"] == tiny_onnx.stat().st_size


# --- static PTQ ------------------------------------------------------------------------------

def test_cpu_type_choice():
    assert ort_types(vnni=True) == {"activation_type": "QUInt8", "weight_type": "QInt8",
                                    "reduce_range": False, "cpu_vnni": True}
    assert ort_types(vnni=False)["reduce_range"] is True
    assert cpu_has_vnni({"avx2", "avx512_vnni"}) and cpu_has_vnni({"asimddp"})
    assert not cpu_has_vnni({"avx2", "avx512f"})


def test_static_ort_ddrnet(ddrnet_onnx, calib, tmp_path):
    out = tmp_path / "static_ort.onnx"
    meta = quantize_static_onnx(ddrnet_onnx, out, calib, target="ort")
    g = inspect_onnx(out)
    head = output_head_nodes(onnx.load(str(ddrnet_onnx)))
    assert meta["float_head"] and len(head) == 2  # classifier conv + final resize stay float
    # 55 convs of the network + its stand-alone BNs (DAPPM, head: 11 at 64x64) and DAPPM's 3 padded
    # pools as INT8 depthwise convs
    n_bn, n_pool = len(meta["bn_as_depthwise_conv"]), len(meta["avgpool_as_depthwise_conv"])
    assert n_bn == 11 and n_pool == 3
    assert g["convs"] == 55 + n_bn + n_pool and g["quantized_convs"] == 54 + n_bn + n_pool and g["float_convs"] == 1
    assert g["int8_weight_fraction"] > 0.95
    assert g["file_bytes"] < 0.30 * ddrnet_onnx.stat().st_size
    assert "uint8" in g["qdq_dtypes"] and g["weight_dtypes"] == ["int8"]
    assert meta["reduce_range"] is (not cpu_has_vnni())
    # quantizer-made names are short; the network's own node names (profiles, float lists) are kept
    proto = onnx.load(str(out))
    assert meta["compacted_names"]["renamed_tensors"] > 100
    assert not any("QuantizeLinear" in t for n in proto.graph.node for t in list(n.input) + list(n.output))
    fp32_names = {n.name for n in onnx.load(str(ddrnet_onnx)).graph.node}
    assert all(n.name in fp32_names or n.name.endswith("_as_dwconv") for n in proto.graph.node if n.op_type == "Conv")


def test_compact_qdq_names_changes_names_not_results(ddrnet_onnx, calib, tmp_path):
    from quant.qdq_onnx import compact_qdq_names

    out = tmp_path / "static_ort.onnx"
    quantize_static_onnx(ddrnet_onnx, out, calib, target="ort")
    # Give every Q/DQ output the long name a quantizer writes (consistently), then compact again.
    long = onnx.load(str(out))
    graph_outputs = {v.name for v in long.graph.output}
    rename = {o: f"{o}_{n.op_type}_Output_as_onnxruntime_names_it" for n in long.graph.node
              if n.op_type in ("QuantizeLinear", "DequantizeLinear") for o in n.output if o not in graph_outputs}
    for node in long.graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
        node.output[:] = [rename.get(o, o) for o in node.output]
    long_path, short_path = tmp_path / "long.onnx", tmp_path / "short.onnx"
    onnx.save(long, str(long_path))
    stats = compact_qdq_names(long)
    onnx.checker.check_model(long)
    onnx.save(long, str(short_path))
    assert stats["renamed_tensors"] >= len(rename) and stats["renamed_nodes"] > 0
    assert short_path.stat().st_size < long_path.stat().st_size
    assert [v.name for v in long.graph.output] == [v.name for v in onnx.load(str(out)).graph.output]
    x = calib.arrays[0]
    runs = []
    for path in (long_path, short_path):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        runs.append(sess.run(None, {sess.get_inputs()[0].name: x})[0])
    assert np.array_equal(runs[0], runs[1])


def _bn_graph(channels: int = 6, eps: float = 1e-3) -> onnx.ModelProto:
    """x -> Relu -> BatchNormalization (float, with running statistics) -> y."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    params = {"gamma": rng.uniform(0.5, 2, channels), "beta": rng.normal(0, 1, channels),
              "mean": rng.normal(0, 3, channels), "var": rng.uniform(0.01, 4, channels)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()]
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("BatchNormalization", ["r", "gamma", "beta", "mean", "var"], ["y"], name="bn",
                              epsilon=eps)]
    shape = [1, channels, 5, 7]
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run_proto(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("eps", [1e-5, 1e-3, 0.1])
def test_fold_batchnorm_statistics_keeps_the_affine_map(eps):
    from quant.qdq_onnx import fold_batchnorm_statistics

    proto = _bn_graph(eps=eps)
    x = np.random.default_rng(1).normal(0, 3, (1, 6, 5, 7)).astype(np.float32)
    before = _run_proto(proto, x)
    assert fold_batchnorm_statistics(proto) == 1
    onnx.checker.check_model(proto)
    after = _run_proto(proto, x)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    values = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    bn = next(n for n in proto.graph.node if n.op_type == "BatchNormalization")
    mean, var = values[bn.input[3]], values[bn.input[4]]
    assert np.all(mean == 0) and np.all(np.float32(var + np.float32(eps)) == 1)
    assert not (values[bn.input[1]] == _bn_graph(eps=eps).graph.initializer[1]).all()  # beta now carries mean


def test_fold_batchnorm_statistics_shares_stats_and_skips_shared_params():
    from onnx import helper

    from quant.qdq_onnx import fold_batchnorm_statistics

    proto = _bn_graph()
    graph = proto.graph
    # a second BN with its own parameters, and a third that reuses the first one's: not folded
    for name in ("gamma", "beta", "mean", "var"):
        t = onnx.TensorProto()
        t.CopyFrom(next(i for i in graph.initializer if i.name == name))
        t.name = f"{name}2"
        graph.initializer.append(t)
    graph.node.append(helper.make_node("BatchNormalization", ["y", "gamma2", "beta2", "mean2", "var2"], ["y2"],
                                       name="bn2", epsilon=1e-3))
    graph.node.append(helper.make_node("BatchNormalization", ["y2", "gamma2", "beta", "mean", "var"], ["y3"],
                                       name="bn3", epsilon=1e-3))
    graph.output[0].name = "y3"
    x = np.random.default_rng(2).normal(0, 1, (1, 6, 5, 7)).astype(np.float32)
    before = _run_proto(proto, x)
    assert fold_batchnorm_statistics(proto) == 0  # every parameter is read twice: nothing is safe to change
    del graph.node[-1]
    graph.output[0].name = "y2"
    before = _run_proto(proto, x)
    assert fold_batchnorm_statistics(proto) == 2
    bns = [n for n in graph.node if n.op_type == "BatchNormalization"]
    assert bns[0].input[3:] == bns[1].input[3:]  # one zero mean and one unit variance for both
    assert len(graph.initializer) == 4 + 2
    np.testing.assert_allclose(_run_proto(proto, x), before, rtol=1e-5, atol=1e-5)


def test_compact_int8_model_shrinks_static_file_same_results_and_kernels(ddrnet_onnx, calib, tmp_path):
    from quant.qdq_onnx import compact_int8_model

    full = tmp_path / "full.onnx"
    quantize_static_onnx(ddrnet_onnx, full, calib, target="ort", compact_names=False)
    proto = onnx.load(str(full))
    stats = compact_int8_model(proto)
    onnx.checker.check_model(proto)
    small = tmp_path / "small.onnx"
    onnx.save(proto, str(small))
    assert stats["dropped_weight_zero_points"] >= 60 and stats["shared_scalars"] > 0
    assert full.stat().st_size - small.stat().st_size > 100_000  # ~2.6 % of this 6 MB file, 7 % of ESPNet's
    fp32_nodes = {n.name for n in onnx.load(str(ddrnet_onnx)).graph.node}
    assert {n.name for n in proto.graph.node if n.op_type == "Conv"} <= fp32_nodes | {
        n.name for n in onnx.load(str(full)).graph.node}
    assert [v.name for v in proto.graph.input] == [v.name for v in onnx.load(str(full)).graph.input]
    x = calib.arrays[1]
    assert np.array_equal(_runs(full, x), _runs(small, x))

    def fused_ops(path):  # what ORT runs after its QDQ fusion: the same INT8 kernels either way
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(path.with_suffix(".opt.onnx"))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return sorted(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)

    assert fused_ops(full) == fused_ops(small) and "QLinearConv" in fused_ops(small)


def test_bn_and_padded_pools_as_depthwise_conv_are_exact_and_leave_no_float_bn(ddrnet_onnx, calib, tmp_path):
    plain, rewritten = tmp_path / "plain.onnx", tmp_path / "bn.onnx"
    assert ort_pre_process(ddrnet_onnx, plain) == {"bn_as_depthwise_conv": [], "avgpool_as_depthwise_conv": []}
    names = ort_pre_process(ddrnet_onnx, rewritten, bn_as_conv=True)
    ops = [n.op_type for n in onnx.load(str(rewritten)).graph.node]
    assert len(names["bn_as_depthwise_conv"]) == 11 and "BatchNormalization" not in ops
    assert [n.op_type for n in onnx.load(str(plain)).graph.node].count("BatchNormalization") == 11
    # DAPPM's three padded pools (5/9/17 wide) became depthwise convs; its global pool stays
    assert len(names["avgpool_as_depthwise_conv"]) == 3 and "AveragePool" not in ops and "GlobalAveragePool" in ops
    a, b = _runs(plain, calib.arrays[0]), _runs(rewritten, calib.arrays[0])
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(np.abs(a).max()))
    # quantized with the rewrite, ORT's session graph keeps no float BatchNormalization island
    out = tmp_path / "int8.onnx"
    quantize_static_onnx(ddrnet_onnx, out, calib, target="ort")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "session.onnx")
    ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    session_ops = [n.op_type for n in onnx.load(str(tmp_path / "session.onnx")).graph.node]
    assert "BatchNormalization" not in session_ops and session_ops.count("QLinearConv") == 54 + 11 + 3


def test_static_trt_is_symmetric_int8(ddrnet_onnx, calib, tmp_path):
    out = tmp_path / "static_trt.onnx"
    meta = quantize_static_onnx(ddrnet_onnx, out, calib, target="trt")
    g = meta["graph"]
    assert g["zero_points_all_zero"] is True and g["qdq_dtypes"] == g["weight_dtypes"] == ["int8"]
    assert g["initializer_bytes"]["int32"] == 0  # float biases: TensorRT does not dequantize int32
    assert g["float_convs"] == 0 and g["quantized_convs"] == g["convs"] == 55
    assert meta["opset"] == 17 and (meta["activation_type"], meta["weight_type"]) == ("QInt8", "QInt8")
    proto = onnx.load(str(out))
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"} and meta["ir_version"] <= 8
    assert not {n.op_type for n in proto.graph.node} & {"QLinearConv", "ConvInteger"}
    # No Q/DQ around the bilinear resizes; per-channel weight scales on the conv output axis.
    producers = {o: n for n in proto.graph.node for o in n.output}
    resize_inputs = [producers.get(n.input[0]) for n in proto.graph.node if n.op_type == "Resize"]
    assert len(resize_inputs) == 8 and all(p is None or p.op_type != "DequantizeLinear" for p in resize_inputs)
    inits = {t.name: t for t in proto.graph.initializer}
    weight_dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                 and len(inits[n.input[0]].dims) == 4]
    assert all(inits[n.input[0]].data_type == onnx.TensorProto.INT8 for n in weight_dq)
    assert len(weight_dq) == 55 and all(len(inits[n.input[1]].dims) == 1 for n in weight_dq)
    assert np.isfinite(_runs(out, calib.arrays[0])).all()  # the TRT artifact also runs on ORT CPU


@pytest.mark.parametrize("recipe", [("ort", "minmax"), ("ort", "percentile"), ("trt", "entropy"),
                                    ("dynamic", "")])
def test_int8_accuracy_on_trained_tiny_net(tiny_onnx, tiny_calib, tiny_val, tmp_path, recipe):
    target, method = recipe
    out = tmp_path / f"{target}_{method}.onnx"
    if target == "dynamic":
        quantize_dynamic_onnx(tiny_onnx, out)
    else:
        meta = quantize_static_onnx(tiny_onnx, out, tiny_calib, target=target, method=method)
        assert meta["method"] == method and meta["graph"]["float_convs"] == (1 if target == "ort" else 0)
    check = parity(tiny_onnx, out, [x for x, _ in tiny_val])
    assert check["argmax_agreement"] >= 0.90, check
    fp32, int8 = _miou(tiny_onnx, tiny_val), _miou(out, tiny_val)
    assert fp32 > 0.15 and int8 >= 0.9 * fp32, (fp32, int8)


def test_static_errors(tiny_onnx, tiny_calib, calib, tmp_path):
    with pytest.raises(QuantError, match="valid targets: ort, trt"):
        quantize_static_onnx(tiny_onnx, tmp_path / "x.onnx", tiny_calib, target="tensorrt")
    with pytest.raises(QuantError, match="valid methods"):
        quantize_static_onnx(tiny_onnx, tmp_path / "x.onnx", tiny_calib, method="mse")
    with pytest.raises(QuantError, match=r"input_hw=\(64, 96\)"):
        quantize_static_onnx(tiny_onnx, tmp_path / "x.onnx", calib)
    with pytest.raises(QuantError, match="reduce_range"):
        quantize_static_onnx(tiny_onnx, tmp_path / "x.onnx", tiny_calib, target="trt", reduce_range=True)
    with pytest.raises(QuantError, match="export it first"):
        quantize_static_onnx(tmp_path / "missing.onnx", tmp_path / "x.onnx", tiny_calib)
    assert not (tmp_path / "x.onnx").exists()


# --- dynamic PTQ -----------------------------------------------------------------------------

def test_dynamic_onnx_runs_on_ort_cpu(ddrnet_onnx, calib, tmp_path):
    out = tmp_path / "dynamic.onnx"
    meta = quantize_dynamic_onnx(ddrnet_onnx, out, check_inputs=calib.arrays[:4])
    g = meta["graph"]
    assert g["conv_integer"] == 55 and g["float_convs"] == 0 and meta["int8_ops"]["ConvInteger"] == 55
    assert meta["weight_type"] == "QUInt8" and g["weight_dtypes"] == ["uint8"]
    assert g["file_bytes"] < 0.30 * ddrnet_onnx.stat().st_size
    assert meta["parity"]["inputs"] == 4 and np.isfinite(meta["parity"]["rel_l2"])
    y = _runs(out, calib.arrays[0])
    assert y.shape == (1, 11, *HW) and np.isfinite(y).all()
    assert out.with_suffix(".json").is_file()


def test_dynamic_torch_says_conv_nets_stay_float():
    model = zoo.build("ddrnet", num_classes=11, aux=False)
    qmodel, meta = quantize_dynamic_torch(model)
    assert meta["int8_modules"] == 0 and meta["float_convs"] == 55 and meta["is_int8"] is False
    assert "FP32 in all but name" in meta["note"]
    assert qmodel is not model

    mixed = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    qmixed, meta = quantize_dynamic_torch(mixed)
    assert meta["int8_modules"] == 1 and meta["float_convs"] == 1 and meta["is_int8"]
    assert qmixed(torch.randn(2, 3, 8, 8)).shape == (2, 5)


# --- PyTorch INT8 kernels (FX static PTQ) ----------------------------------------------------


def test_torch_static_ptq_runs_int8_kernels_and_agrees(tiny_model, tiny_calib, tiny_val, tmp_path):
    from quant.torch_ptq import load_static_torch, quantize_static_torch

    meta = quantize_static_torch(tiny_model, tiny_calib, tmp_path / "static.pt", parent_sha256="abc")
    assert meta["calibrated_batches"] == tiny_calib.size and meta["quantizers"]["activation_quantizers"] >= 3
    assert json.loads((tmp_path / "static.json").read_text())["parent"]["sha256"] == "abc"
    int8 = load_static_torch(TinyNet(), tmp_path / "static.pt", reduce_range=meta["reduce_range"])
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in int8.modules())
    x = torch.from_numpy(np.concatenate([v[0] for v in tiny_val]))
    with torch.no_grad():
        agree = (int8(x).argmax(1) == tiny_model(x).argmax(1)).float().mean().item()
    assert agree > 0.95


def _observers(prepared: nn.Module) -> dict[str, nn.Module]:
    from torch.ao.quantization import ObserverBase

    return {n: m for n, m in prepared.named_modules() if isinstance(m, ObserverBase)}


def _outlier_batches() -> list[torch.Tensor]:
    """Four 3x128x128 images of N(0, 1) noise, one pixel of one image at 60: a single value in
    196,608, rarer than the 0.001 % the percentile method cuts."""
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(1, 3, 128, 128, generator=gen) for _ in range(4)]
    xs[2][0, 1, 7, 9] = 60.0
    return xs


def test_fx_ptq_observers_follow_the_calibration_method():
    from torch.ao.quantization import HistogramObserver, MinMaxObserver, PerChannelMinMaxObserver

    from quant import fx_quant

    expected = {"minmax": MinMaxObserver, "percentile": fx_quant.PercentileObserver, "entropy": HistogramObserver}
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    scales = {}
    for method, cls in expected.items():
        prepared = fx_quant.prepare(net, qat=False, input_hw=(16, 16), scheme="affine", reduce_range=True,
                                    calib_method=method)
        observers = _observers(prepared)
        assert observers and all(type(o) is cls for o in observers.values()), (method, observers)
        fx_quant.calibrate(prepared, _outlier_batches())
        # The input's observer: minmax stretches its range to the outlier, percentile cuts it.
        scale, _ = prepared.activation_post_process_0.calculate_qparams()
        scales[method] = float(scale)
        # Weights: per-channel symmetric min/max whatever the method (ORT's methods calibrate activations only).
        weight = fx_quant.qconfig_mapping(qat=False, scheme="affine", calib_method=method).global_qconfig.weight()
        assert isinstance(weight, PerChannelMinMaxObserver) and weight.qscheme == torch.per_channel_symmetric
    assert scales["minmax"] > 60 / 127  # 7-bit activations (reduce_range) over -4.x .. 60
    assert scales["percentile"] * 127 < 10  # about -4.5 .. 4.5: the N(0, 1) noise without the outlier
    with pytest.raises(ValueError, match="valid methods: minmax, percentile, entropy"):
        fx_quant.prepare(net, qat=False, scheme="affine", calib_method="kl")


def test_percentile_observer_cuts_where_onnx_runtime_does():
    """Same data through ORT's percentile histogram collector (its defaults: |x|, 2048 bins, 99.999)
    and through the FX observer: the same threshold, up to the documented one-bin difference."""
    import contextlib
    import io

    from onnxruntime.quantization.calibrate import HistogramCollector

    from quant import fx_quant
    from quant.calibrate import PERCENTILE, PERCENTILE_BINS

    rng = np.random.default_rng(1)
    # Sizes that leave no exact tie at the percentile; a later, wider batch grows the histogram.
    batches = [(rng.standard_normal(100_003) * s).astype(np.float32) for s in (1.0, 2.0, 0.5, 3.0)]
    batches[1][5] = 50.0
    obs = fx_quant.PercentileObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    for b in batches:
        obs(torch.from_numpy(b))
    ort = HistogramCollector(method="percentile", symmetric=True, num_bins=PERCENTILE_BINS, num_quantized_bins=128,
                             percentile=PERCENTILE, scenario="same")
    with contextlib.redirect_stdout(io.StringIO()):  # the collector prints its progress
        for b in batches:
            ort.collect({"t": [b]})
        ort_lo, ort_hi = (float(v) for v in ort.compute_collection_result()["t"][:2])
    assert abs(float(obs.max_val) - ort_hi) <= 2 * obs.bin_width and abs(float(obs.min_val) - ort_lo) <= 2 * obs.bin_width
    everything = np.abs(np.concatenate(batches))
    assert float(obs.max_val) < 20 < everything.max()  # the 50 is cut
    assert abs(float(obs.max_val) - np.quantile(everything, PERCENTILE / 100)) <= obs.bin_width


def test_percentile_observer_edge_cases():
    from quant import fx_quant

    obs = fx_quant.PercentileObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, bins=8)
    obs(torch.zeros(10))  # only zeros: no resolution yet, an empty range
    assert float(obs.min_val) == float(obs.max_val) == 0.0
    obs(torch.linspace(0, 1, 1000))
    assert float(obs.abs_histogram[0]) >= 10 and float(obs.max_val) == 1.0  # the zeros count, nothing cut
    obs(torch.tensor([1000.0]))  # 1000x the range: neighbours merge instead of 8000 bins
    assert obs.abs_histogram.numel() <= 8 * fx_quant.PercentileObserver.MAX_BIN_FACTOR
    assert float(obs.abs_histogram.sum()) == 1011
    assert "abs_histogram" not in obs.state_dict()  # the saved state is MinMaxObserver's


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_torch_static_ptq_records_and_reloads_its_method(method, tiny_model, tiny_calib, tmp_path):
    from quant.torch_ptq import load_static_torch, quantize_static_torch

    meta = quantize_static_torch(tiny_model, tiny_calib, tmp_path / "static.pt", method=method)
    assert meta["method"] == method and json.loads((tmp_path / "static.json").read_text())["method"] == method
    # Without `method` the sidecar decides which observers the saved state loads into.
    int8 = load_static_torch(TinyNet(), tmp_path / "static.pt", reduce_range=meta["reduce_range"])
    x = torch.from_numpy(tiny_calib.arrays[0])
    with torch.no_grad():
        assert (int8(x).argmax(1) == tiny_model(x).argmax(1)).float().mean() > 0.9
    if method == "entropy":  # a histogram state does not fit min/max observers: one line says so
        from zoo.checkpoints import CheckpointError

        with pytest.raises(CheckpointError, match="does not fit"):
            load_static_torch(TinyNet(), tmp_path / "static.pt", reduce_range=meta["reduce_range"], method="minmax")


def test_ort_percentile_is_pinned_to_the_fx_one(tiny_onnx, tiny_calib, tmp_path):
    from quant.calibrate import PERCENTILE

    meta = quantize_static_onnx(tiny_onnx, tmp_path / "p.onnx", tiny_calib, method="percentile")
    assert meta["method"] == "percentile" and meta["extra_options"]["CalibPercentile"] == PERCENTILE


# --- sensitivity and mixed precision ---------------------------------------------------------


def test_layer_errors_rank_quantized_nodes(ddrnet_onnx, calib, tmp_path):
    from quant.ptq_static import ort_pre_process
    from quant.sensitivity import layer_errors

    pre = tmp_path / "pre.onnx"
    ort_pre_process(ddrnet_onnx, pre)
    quantize_static_onnx(pre, tmp_path / "short.onnx", calib, method="minmax", pre_processed=True)
    with pytest.raises(QuantError, match="compact_names=False"):  # compacted names match no layer
        layer_errors(pre, tmp_path / "short.onnx", calib, images=2)
    quantize_static_onnx(pre, tmp_path / "int8.onnx", calib, method="minmax", pre_processed=True, compact_names=False)
    errors = layer_errors(pre, tmp_path / "int8.onnx", calib, images=2)
    names = {n.name for n in onnx.load(str(pre)).graph.node}
    assert len(errors) > 20 and all(e.node in names for e in errors)
    assert all(np.isfinite(e.sqnr_db) and np.isfinite(e.added_noise_db) for e in errors)
    assert [e.added_noise_db for e in errors] == sorted((e.added_noise_db for e in errors), reverse=True)
    assert {e.op_type for e in errors} >= {"Conv"}


def _float_convs(path: Path) -> int:
    return inspect_onnx(path)["float_convs"]


def test_mixed_precision_search_keeps_the_fewest_layers_in_float(tiny_onnx, tiny_calib, tmp_path):
    from quant.sensitivity import search_mixed_precision

    base = tmp_path / "base.onnx"
    quantize_static_onnx(tiny_onnx, base, tiny_calib, method="minmax")
    baseline = _float_convs(base)
    # A score that only the model with two more float convolutions reaches: the search has to
    # find exactly the smallest such set of ranked layers.
    result = search_mixed_precision(tiny_onnx, tmp_path / "mixed.onnx", tiny_calib,
                                    lambda p: _float_convs(p) - baseline, fp32_score=2.0, target_retention=1.0,
                                    method="minmax", log=lambda m: None)
    assert result.score >= 2 and _float_convs(tmp_path / "mixed.onnx") == baseline + 2
    k = len(result.kept_float)
    steps = {s["float_layers"]: s["score"] for s in result.steps}
    assert steps[k] >= 2 and all(v < 2 for j, v in steps.items() if j < k)
    meta = json.loads((tmp_path / "mixed.json").read_text())
    assert meta["mixed_precision"]["kept_float"] == result.kept_float and meta["mixed_precision"]["reached"]
    assert set(result.kept_float) <= set(meta["nodes_to_exclude"])


def test_family_search_adds_whole_kinds_of_layer_until_the_goal():
    from quant.sensitivity import _search_families

    families = {"Add": ["a1", "a2"], "Concat": ["c1"], "BatchNorm": ["b1", "b2", "b3"]}
    gains = {"Add": 0.2, "Concat": 0.05, "BatchNorm": 0.25}
    calls = []

    def attempt(nodes, how):
        calls.append(how)
        return 0.5 + sum(g for f, g in gains.items() if set(families[f]) <= set(nodes))

    assert _search_families(families, attempt, 0.95, None) == ["b1", "b2", "b3", "a1", "a2"]
    assert calls[:3] == ["families Add", "families Concat", "families BatchNorm"]
    assert _search_families(families, attempt, 2.0, None) is None          # unreachable goal
    assert _search_families(families, attempt, 0.95, 3) is None            # max_float too small


def test_mixed_precision_search_can_keep_a_whole_family_in_float(tiny_onnx, tiny_calib, tmp_path):
    """A score only reached when every node of one non-compute family runs in float (as ESPNet's
    Add/Concat/BatchNorm path): the family stage finds it, with every convolution still INT8."""
    from quant.ptq_static import ort_pre_process
    from quant.sensitivity import layer_families, search_mixed_precision

    pre, base = tmp_path / "pre.onnx", tmp_path / "base.onnx"
    ort_pre_process(tiny_onnx, pre, bn_as_conv=True)
    quantize_static_onnx(pre, base, tiny_calib, method="minmax", pre_processed=True)
    families = layer_families(pre, base)
    assert families and not any(k in ("Conv", "Gemm", "MatMul") for k in families)
    kind = max(families, key=lambda k: len(families[k]))
    target = set(families[kind])

    def score(path):  # 2 when no output of a target node is quantized again (the node runs in float)
        graph = onnx.load(str(path)).graph
        requantized = {i for n in graph.node if n.op_type == "QuantizeLinear" for i in n.input}
        return 2.0 if not any(o in requantized for n in graph.node if n.name in target for o in n.output) else 0.0

    result = search_mixed_precision(tiny_onnx, tmp_path / "mixed.onnx", tiny_calib, score, fp32_score=2.0,
                                    target_retention=1.0, method="minmax", log=lambda m: None)
    assert result.score == 2.0 and set(result.kept_float) == target, result.steps
    assert any(s["how"] == f"families {kind}" and s["score"] == 2.0 for s in result.steps)
    assert _float_convs(tmp_path / "mixed.onnx") == _float_convs(base)  # convolutions stay INT8
    # the cost the search ranks hits by: no convolution weights left in float by a family set
    assert all(s["float_weight_params"] == 0 for s in result.steps if s["how"].startswith("families"))


def test_float_weight_params_counts_kernels_left_in_float(tiny_onnx, tmp_path):
    from quant.ptq_static import ort_pre_process
    from quant.sensitivity import float_weight_params

    pre = tmp_path / "pre.onnx"
    ort_pre_process(tiny_onnx, pre, bn_as_conv=True)
    proto = onnx.load(str(pre))
    weights = {t.name: t for t in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    others = [n.name for n in proto.graph.node if n.op_type not in ("Conv", "Gemm", "MatMul")]
    first = int(np.prod(weights[convs[0].input[1]].dims))
    assert float_weight_params(pre, [convs[0].name]) == first > 0  # the kernel, not the bias
    assert float_weight_params(proto, others) == 0
    assert float_weight_params(pre, [c.name for c in convs]) == sum(
        int(np.prod(weights[c.input[1]].dims)) for c in convs)


def test_mixed_precision_rejects_bad_target(tiny_onnx, tiny_calib, tmp_path):
    from quant.sensitivity import search_mixed_precision

    with pytest.raises(QuantError, match="target-retention"):
        search_mixed_precision(tiny_onnx, tmp_path / "x.onnx", tiny_calib, lambda p: 1.0, fp32_score=1.0,
                               target_retention=1.5)


def test_int8_module_count_includes_fused_conv_relu_and_skips_weightless_modules(tmp_path):
    """Every conv + ReLU pair becomes a fused quantized ConvReLU2d: the count of what runs in INT8
    must include those (it once counted only plain quantized convs, and a Dropout)."""
    from quant import fx_quant
    from quant.calibrate import CalibrationData
    from quant.torch_ptq import load_static_torch, quantize_static_torch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.1), nn.Conv2d(8, 4, 1)).eval()
    rng = np.random.default_rng(0)
    calib = CalibrationData(arrays=[rng.random((1, 3, 32, 32), dtype=np.float32) for _ in range(2)],
                            names=["0", "1"], sha256="x", dataset="random", split="train", seed=0, input_hw=(32, 32))
    meta = quantize_static_torch(model, calib, tmp_path / "static.pt")
    int8 = load_static_torch(model, tmp_path / "static.pt", reduce_range=meta["reduce_range"])
    kinds = {type(m).__name__ for m in int8.modules()}
    assert "ConvReLU2d" in kinds and "Dropout" in kinds
    assert fx_quant.count_int8_modules(int8) == {"int8_modules": 3, "float_convs": 0}


def test_float_head_keeps_a_segmentation_classifier_and_its_logits_float(tmp_path):
    """`quantize_static_torch(..., float_head=True)`: the convolution nearest the output runs in
    float (so do the logits and the upsampling after it), every other convolution in INT8; the
    choice is recorded and restored on load."""
    import torch.nn.functional as F

    from quant import fx_quant
    from quant.calibrate import CalibrationData
    from quant.torch_ptq import load_static_torch, quantize_static_torch

    class Seg(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
            self.cls = nn.Conv2d(8, 5, 1)

        def forward(self, x):
            return F.interpolate(self.cls(self.body(x)), size=x.shape[-2:], mode="bilinear", align_corners=False)

    torch.manual_seed(0)
    model = Seg().eval()
    assert fx_quant.float_module_names(model, ("head",)) == ["cls"]
    rng = np.random.default_rng(0)
    calib = CalibrationData(arrays=[rng.random((1, 3, 32, 32), dtype=np.float32) for _ in range(2)],
                            names=["0", "1"], sha256="x", dataset="random", split="train", seed=0, input_hw=(32, 32))
    meta = quantize_static_torch(model, calib, tmp_path / "static.pt", float_head=True)
    assert meta["float_ops"] == ["head"] and meta["float_modules"] == ["cls"]
    int8 = load_static_torch(model, tmp_path / "static.pt", reduce_range=meta["reduce_range"])
    assert fx_quant.count_int8_modules(int8) == {"int8_modules": 2, "float_convs": 1}
    x = torch.from_numpy(calib.arrays[0])
    with torch.no_grad():
        out = int8(x)
    assert not out.is_quantized and out.shape == (1, 5, 32, 32)
    # float all the way: FX would otherwise observe the head's output for the upsampling (an op it
    # runs on quantized tensors) and round the logits to 256 levels (FastDepthSeg: -0.8 % agreement)
    assert torch.unique(out).numel() > 256
    prepared = fx_quant.prepare(model, qat=False, input_hw=(32, 32), scheme="affine", float_ops=["head"])
    nodes = list(prepared.graph.nodes)
    after_head = nodes[[n.target for n in nodes].index("cls") + 1:]
    assert not [n.target for n in after_head if n.op == "call_module"], "no observer after the float head"
    # without it, the classifier is INT8 too (the network's own default)
    meta = quantize_static_torch(model, calib, tmp_path / "all.pt")
    int8 = load_static_torch(model, tmp_path / "all.pt", reduce_range=meta["reduce_range"])
    assert meta["float_ops"] == [] and fx_quant.count_int8_modules(int8) == {"int8_modules": 3, "float_convs": 0}


def test_network_float_scopes_run_wholly_in_float():
    """A network's `fx_float_modules` (PIDNet: its attention fusions) run every op inside them in
    float in FX INT8 graphs; everything else stays INT8; a wrong name is an error, not a no-op."""
    from quant import fx_quant

    class Net(nn.Module):
        fx_float_modules = ("gate",)

        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
            self.gate = nn.Sequential(nn.Conv2d(8, 8, 1), nn.Sigmoid())
            self.out = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.body(x)
            return self.out(y * self.gate(y))

    net = Net().eval()
    assert fx_quant.float_scopes(net) == ("gate",) and "gate" in fx_quant.float_module_names(net, ())
    prepared = fx_quant.prepare(net, qat=False, input_hw=(16, 16), scheme="affine", float_ops=())
    prepared(torch.randn(2, 3, 16, 16))
    int8 = fx_quant.convert_int8(prepared, warn=False)
    kinds = {n: type(m).__module__ for n, m in int8.named_modules() if n in ("body.0", "gate.0", "out")}
    assert kinds["gate.0"] == "torch.nn.modules.conv" and "quantized" in kinds["body.0"] and "quantized" in kinds["out"]
    Net.fx_float_modules = ("nope",)
    with pytest.raises(ValueError, match="fx_float_modules names \\['nope'\\]"):
        fx_quant.float_scopes(Net())


def test_reduce_sum_inputs_stay_float_in_the_ort_artifact():
    """The product a ReduceSum sums (PIDNet's attention dot product) is left unquantized, so the
    sum gets float input: OpenVINO computes a ReduceSum of dequantized u8 wrongly."""
    from onnx import TensorProto, helper

    from quant.ptq_static import reduce_sum_producers

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph([
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Mul", ["a", "x"], ["prod"], name="dot_mul"),
        helper.make_node("Mul", ["a", "a"], ["sq"], name="other_mul"),
        helper.make_node("ReduceSum", ["prod", "axes"], ["s"], name="dot_sum", keepdims=1),
        helper.make_node("ReduceSum", ["sq", "axes"], ["s2"], name="sum2", keepdims=1),
        helper.make_node("Add", ["s", "s2"], ["y"], name="add"),
    ], "g", [x], [y], initializer=[axes])
    assert reduce_sum_producers(helper.make_model(graph)) == ["dot_mul", "other_mul"]
    graph.node[3].input[0] = "a"  # a ReduceSum fed by anything else than a product or sum: nothing to keep
    assert reduce_sum_producers(helper.make_model(graph)) == ["other_mul"]

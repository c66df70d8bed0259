"""The OpenVINO backend on hand-made ONNX files: FP32 parity with ONNX Runtime, and the record of
what really ran in INT8 (static QDQ: the convolutions; ORT's dynamic file: nothing); and the
OpenVINO rows of bench.ort_study.

OpenVINO runs in processes of its own in this project (bench cells), never inside the long-lived
pytest process, which by the end of the suite holds torch, ONNX Runtime, GStreamer and every
other library (a pytest process that had created OpenVINO cores died of SIGSEGV later in the
suite, session 15). So `test_openvino_in_its_own_process` runs this module's tests in a child
pytest with OV_CHILD set, and they skip themselves anywhere else.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO

OV_CHILD = "EDGEZOO_OPENVINO_TEST_CHILD"
NOT_INSTALLED = "openvino not installed (pip install -e '.[openvino]')"
in_child = pytest.mark.skipif(not os.environ.get(OV_CHILD),
                              reason="runs in a pytest child process of its own (test_openvino_in_its_own_process)")


@pytest.mark.skipif(bool(os.environ.get(OV_CHILD)), reason="this is the child process")
def test_openvino_in_its_own_process():
    if importlib.util.find_spec("openvino") is None:
        pytest.skip(NOT_INSTALLED)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", __file__],
                         capture_output=True, text=True, cwd=REPO, timeout=900, env={**os.environ, OV_CHILD: "1"})
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and " failed" not in res.stdout


@pytest.fixture
def openvino_usable():
    """Skip with the backend's own reason when OpenVINO cannot run in this process (e.g. GStreamer
    is loaded: see bench.backends.openvino.conflicting_unwinder)."""
    from bench.backends import get_backend

    ok, why = get_backend("openvino").available()
    if not ok:
        pytest.skip(why)
    from bench.backends.openvino import import_openvino

    return import_openvino()


def _conv_model(path):
    """Two 3x3 convolutions with ReLU, 8 -> 16 -> 16 channels, fixed seeded weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.2
    w2 = rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.1
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["y"])]
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 32, 32])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))


def _inputs(n=4):
    rng = np.random.default_rng(1)
    return [rng.standard_normal((1, 8, 32, 32)).astype(np.float32) for _ in range(n)]


def _ort(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _loaded(path):
    from bench.backends import get_backend

    backend = get_backend("openvino")()
    backend.load({"kind": "onnx", "path": str(path)}, threads=1, options={})
    return backend


@in_child
def test_openvino_fp32_matches_onnxruntime_and_reports_float(tmp_path, openvino_usable):
    ov = openvino_usable
    from bench.backends import get_backend

    assert get_backend("openvino").available() == (True, "")
    _conv_model(tmp_path / "fp32.onnx")
    backend = _loaded(tmp_path / "fp32.onnx")
    x = _inputs(1)[0]
    np.testing.assert_allclose(backend.infer(x), _ort(tmp_path / "fp32.onnx", x), rtol=1e-4, atol=1e-4)
    info = backend.info()
    assert info["inference_precision"] == "f32" and info["openvino"] == ov.__version__
    assert info["int8_compute_layers"] == 0 and sum(info["executed"]["Convolution"].values()) == 2


@in_child
def test_openvino_static_qdq_runs_int8_convs_and_dynamic_file_does_not(tmp_path, openvino_usable):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    _conv_model(tmp_path / "fp32.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": x} for x in _inputs()])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(tmp_path / "fp32.onnx"), str(tmp_path / "static.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    static = _loaded(tmp_path / "static.onnx")
    assert static.info()["int8_compute_layers"] == 2, static.info()["executed"]
    # the same QDQ file on two runtimes computes (nearly) the same thing
    x = _inputs(1)[0]
    ref = _ort(tmp_path / "static.onnx", x)
    scale = float(np.abs(ref).max()) / 255
    assert np.abs(static.infer(x) - ref).max() <= 2 * scale + 1e-6

    quantize_dynamic(str(tmp_path / "fp32.onnx"), str(tmp_path / "dynamic.onnx"), weight_type=QuantType.QUInt8,
                     op_types_to_quantize=["Conv"])
    import onnx

    assert sum(n.op_type == "ConvInteger" for n in onnx.load(str(tmp_path / "dynamic.onnx")).graph.node) == 2
    dynamic = _loaded(tmp_path / "dynamic.onnx")
    # ConvInteger + DynamicQuantizeLinear compile to float convolutions on OpenVINO's CPU plugin:
    # the record must not call that cell INT8
    assert dynamic.info()["int8_compute_layers"] == 0
    np.testing.assert_allclose(dynamic.infer(x), _ort(tmp_path / "dynamic.onnx", x), rtol=0.05, atol=0.05)


def _padded_pool_model(path):
    """Conv -> AveragePool(5, stride 2, pad 2, counting the padding: PyTorch's default) -> Conv,
    no ReLU: the pool's input is signed, so its uint8 zero point is far from 0."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.2
    w2 = rng.standard_normal((16, 16, 1, 1)).astype(np.float32) * 0.3
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["c1"], ["p"], kernel_shape=[5, 5], strides=[2, 2], pads=[2, 2, 2, 2],
                              count_include_pad=1),
             helper.make_node("Conv", ["p", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 16])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@in_child
def test_static_file_with_a_padded_pool_computes_the_same_on_openvino(tmp_path, openvino_usable):
    """OpenVINO pads a counted-padding AveragePool of uint8 data with byte 0 instead of the zero
    point; the ONNX Runtime target's static file writes such pools as depthwise convolutions
    (quant.onnx_rewrites), which both runtimes compute alike."""
    from quant.calibrate import CalibrationData
    from quant.ptq_static import quantize_static_onnx

    _padded_pool_model(tmp_path / "fp32.onnx")
    calib = CalibrationData(arrays=_inputs(8), names=[str(i) for i in range(8)], sha256="0" * 64, dataset="test",
                            split="train", seed=0, input_hw=(32, 32))
    meta = quantize_static_onnx(tmp_path / "fp32.onnx", tmp_path / "static.onnx", calib, target="ort",
                                float_head=False)
    assert len(meta["avgpool_as_depthwise_conv"]) == 1
    backend = _loaded(tmp_path / "static.onnx")
    assert backend.info()["int8_compute_layers"] == 3, backend.info()["executed"]
    for x in _inputs(3):
        ref = _ort(tmp_path / "static.onnx", x)
        step = float(np.abs(ref).max()) / 127
        # the pooled map is 16x16: with byte-0 padding its border rows and columns were off by
        # tens of steps (SQNR below 10 dB)
        assert np.abs(backend.infer(x) - ref).max() <= 3 * step


@in_child
def test_import_sends_no_telemetry(openvino_usable):
    """`import_openvino` leaves out openvino.tools.ovc, whose import starts a telemetry thread."""
    import threading

    assert "openvino.tools.ovc" not in sys.modules
    assert not any(t.name.startswith("ThreadPoolExecutor") for t in threading.enumerate())


@in_child
def test_study_openvino_rows(tmp_path, openvino_usable):
    """bench.ort_study's OpenVINO rows: the edgezoo file itself on OpenVINO, with INT8
    convolutions read back from the compiled model and the per-layer profile; FP32 stays float."""
    from bench.ort_study import run_study
    from tests.conftest import write_segnet_split

    root = tmp_path / "camvid16"
    write_segnet_split(root, "train", 16, seed=3)
    write_segnet_split(root, "val", 2, seed=4)
    rec = run_study("ddrnet", data="camvid", data_root=str(root), weights="random", input_hw=(64, 64), threads=1,
                    rounds=1, iters=2, warmup=1, images=2, calib_images=16, calib_method="minmax", torch_int8=False,
                    artifacts=str(tmp_path / "artifacts"), out=str(tmp_path / "results"), progress=False,
                    log=lambda m: None)
    rows = {v["variant"]: v for v in rec["variants"]}
    assert rec["skipped"] == {} and rows["openvino-int8"]["runtime"] == "openvino"
    assert rows["openvino-int8"]["path"] == rows["edgezoo"]["path"]
    assert rows["openvino-int8"]["int8_compute_layers"] > 0
    assert any(op.startswith("Convolution/I8") for op in rows["openvino-int8"]["op_ms"])
    assert rows["openvino-fp32"]["int8_compute_layers"] == 0 and rows["openvino-fp32"]["agreement"] >= 0.99


def test_process_with_gstreamer_gets_a_reason_not_a_crash():
    """After torch and Gst.init (libunwind.so.8 mapped), OpenVINO's internal C++ exceptions crash
    the process; the backend must say so instead of touching OpenVINO. Run in a subprocess so
    that this pytest process stays clean."""
    # GStreamer is probed in the subprocess too: Gst.init here would disable OpenVINO for the rest
    # of this pytest process (test_ort_study's OpenVINO rows run after this module).
    code = ("import torch\nfrom video import gst\nok, why = gst.gst_available()\n"
            "if not ok:\n    print('NO_GST', why)\n    raise SystemExit(0)\n"
            "from bench.backends import get_backend\nfrom bench.backends.openvino import conflicting_unwinder\n"
            "assert conflicting_unwinder(), 'Gst.init no longer maps libunwind: revisit the guard'\n"
            "print(get_backend('openvino').available())\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    if res.stdout.startswith("NO_GST"):
        pytest.skip(f"GStreamer / PyGObject not installed (README: Video pipelines, system packages): {res.stdout[7:]}")
    assert res.stdout.startswith("(False, ") and "this process has loaded " in res.stdout and "libunwind" in res.stdout

"""bench.run end to end on a tiny CamVid-layout data set, and its one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from zoo.data import load_card

FAST = ["--input-size", "64", "96", "--iters", "3", "--warmup", "1", "--no-progress"]
REQUIRED = ["schema", "cell_key", "model", "variant", "backend", "precision", "device", "dataset", "split",
            "input_hw", "batch", "threads", "profile", "profile_id", "weights_sha256", "status", "error",
            "metrics", "size_mb", "artifact_bytes", "params", "gmacs", "latency_ms", "e2e_latency_ms", "fps",
            "e2e_fps", "images_per_s", "unstable", "load_s", "first_inference_ms", "peak_rss_mb", "rss_delta_mb",
            "baseline_rss_mb", "gpu_memory", "imports_torch", "artifact", "weights", "reference", "data", "env",
            "timestamp", "samples_ms", "e2e_samples_ms"]
STATS = ["median", "p90", "p99", "mean", "std", "cv", "min", "max", "n"]


@pytest.fixture(scope="session")
def bench_artifacts(tmp_path_factory):
    """One artifact cache shared by the benchmark sweeps (also by tests/test_bench_sweeps.py,
    which names the same folder): seeded random weights, their ONNX exports and the FP32
    reference masks are keyed by content, so sharing them only saves time."""
    path = tmp_path_factory.getbasetemp() / "bench-artifacts"
    path.mkdir(exist_ok=True)
    return path


def _bench(args, tmp_path, timeout=600, artifacts=None, env=None):
    # REPO first, the caller's PYTHONPATH kept (a machine may bring packages on it)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "EDGEZOO_ARTIFACTS": str(artifacts or tmp_path / "artifacts"),
           **(env or {})}
    return subprocess.run([sys.executable, "-m", "bench.run", *args, "--out", str(tmp_path / "results")],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


def _records(tmp_path):
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "results").glob("*.json"))]


def test_random_weights_all_backends(tiny_camvid, tmp_path, bench_artifacts):
    res = _bench(["--model", "ddrnet", "--weights", "random", "--data", "camvid", "--data-root", str(tiny_camvid),
                  "--threads", "1", *FAST], tmp_path, artifacts=bench_artifacts)
    failed = {r["backend"]: r["error"] for r in _records(tmp_path) if r["status"] == "failed"}
    assert res.returncode == 0, (failed, res.stderr[-2000:])
    recs = {r["backend"]: r for r in _records(tmp_path)}
    assert set(recs) == {"torch", "torch-cuda", "onnxruntime", "onnxruntime-cuda", "onnxruntime-trt", "openvino",
                         "tensorrt"}
    import torch

    gpu_backends = ["torch-cuda", "onnxruntime-cuda", "onnxruntime-trt", "tensorrt"]
    if not torch.cuda.is_available():  # this project's CI: GPU backends are skipped cells with a reason
        for b in gpu_backends:
            assert recs[b]["status"] == "skipped" and recs[b]["error"], b
        assert recs["tensorrt"]["error"].startswith(("tensorrt not installed", "no CUDA GPU"))
    else:  # a GPU machine: PyTorch CUDA must run, record the GPU and agree with the CPU reference
        r = recs["torch-cuda"]
        assert r["status"] == "ok", r["error"]
        assert r["device"] == "cuda" and r["env"]["gpu"], r["env"].get("gpu")
        assert r["gpu_memory"]["max_allocated_mb"] > 0  # agreement with the CPU reference: the loop below
        assert r["runtime"]["tf32"] is False  # FP32 means FP32: cuDNN's TF32 default is switched off
    from bench.backends import get_backend

    cpu_backends = ["torch", "onnxruntime"] + (["openvino"] if get_backend("openvino").available()[0] else [])
    for name in cpu_backends + (["torch-cuda"] if torch.cuda.is_available() else []):
        r = recs[name]
        assert r["status"] == "ok", r["error"]
        for key in REQUIRED:
            assert key in r, key
        device = "cuda" if name == "torch-cuda" else "cpu"
        assert r["schema"] == 2 and r["precision"] == "fp32" and r["device"] == device and r["batch"] == 1
        for lat in ("latency_ms", "e2e_latency_ms"):
            assert all(isinstance(r[lat][k], (int, float)) for k in STATS), lat
            assert r[lat]["p90"] >= r[lat]["median"] >= r[lat]["min"] > 0 and r[lat]["n"] >= 3
        assert r["fps"] == pytest.approx(1000 / r["latency_ms"]["median"])
        assert r["e2e_fps"] == pytest.approx(1000 / r["e2e_latency_ms"]["median"])
        assert isinstance(r["unstable"], bool)
        assert r["size_mb"] > 1 and r["artifact_bytes"] == pytest.approx(r["size_mb"] * 1e6)
        assert r["peak_rss_mb"] > r["rss_delta_mb"] > 0
        assert len(r["samples_ms"]) == r["latency_ms"]["n"] and len(r["e2e_samples_ms"]) == r["e2e_latency_ms"]["n"]
        assert len(r["artifact"]["sha256"]) == 64 and len(r["weights_sha256"]) == 64 and r["env"]["torch"]
        assert r["env"]["cpu"]["model"] and r["env"]["git"]["commit"] and r["data"]["images"] == 3
        assert 0 <= r["metrics"]["miou"] <= 1 and r["images"] == 3
        assert r["load_s"] > 0 and r["first_inference_ms"] > 0
        assert r["reference"]["status"] == "ok"
        # parity with the PyTorch FP32 reference of the same weights
        assert r["metrics"]["pixel_agreement"] >= 0.99
        assert abs(r["metrics"]["miou_delta_vs_fp32_torch"]) <= 0.01
    assert recs["torch"]["metrics"]["pixel_agreement"] == 1.0  # the reference itself, re-run
    # the honesty fix: an ONNX Runtime cell process never imports torch (torch cells do)
    assert recs["onnxruntime"]["imports_torch"] is False and recs["torch"]["imports_torch"] is True
    if "openvino" in cpu_backends:  # the FP32 ONNX on OpenVINO's CPU plugin, its float layers pinned to f32
        rt = recs["openvino"]["runtime"]
        assert recs["openvino"]["imports_torch"] is False and rt["inference_precision"] == "f32"
        assert rt["int8_compute_layers"] == 0 and rt["executed"]["Convolution"]
    assert recs["onnxruntime"]["peak_rss_mb"] < recs["torch"]["peak_rss_mb"] - 200
    assert "| ddrnet23_slim | fp32" in res.stdout and "skipped: " in res.stdout


def test_trains_quick_checkpoint_when_missing_then_reuses_it(tiny_camvid, tmp_path):
    args = ["--model", "espnet", "--data", "camvid", "--data-root", str(tiny_camvid), "--backend", "onnxruntime",
            "--train-epochs", "2", *FAST]
    first = _bench(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "training one with the quick recipe" in first.stderr
    assert (tmp_path / "artifacts/checkpoints/espnet_p2q8/camvid/quick/best.pt").is_file()
    second = _bench(args, tmp_path)
    assert second.returncode == 0 and "quick recipe" not in second.stderr and "exporting" not in second.stderr
    # the cell is stored already: the rerun reuses its record (append-only: bench.run --force adds one)
    assert "stored (ok" in second.stderr and len(_records(tmp_path)) == 1


@pytest.mark.parametrize("args,message", [
    (["--model", "nosuch"], "unknown model 'nosuch'"),
    (["--model", "ddrnet", "--backend", "tpu"], "unknown backend 'tpu'; valid: torch, torch-cuda, onnxruntime,"),
    (["--model", "ddrnet", "--quant", "qat", "--weights", "random"], "QAT fine-tunes trained FP32 weights"),
    (["--model", "ddrnet", "--quant", "int3"], "unknown variant 'int3'"),
    (["--model", "ddrnet", "--data", "camvid", "--data-root", "/nonexistent/camvid"], "/nonexistent/camvid"),
    (["--model", "ddrnet", "--data", "nosuchdata"], "nosuchdata"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, message):
    res = _bench(args, tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_corrupt_weights(tiny_camvid, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    res = _bench(["--model", "ddrnet", "--weights", str(bad), "--data", "camvid", "--data-root", str(tiny_camvid)],
                 tmp_path, timeout=120)
    assert res.returncode == 2 and "cannot read checkpoint" in res.stderr and "Traceback" not in res.stderr


def test_wrong_checkpoint_lists_keys(tiny_camvid, tmp_path):
    weights = REPO.parent / "shared" / "weights" / "espnet_p_2_q_8_camvid.pth"
    if not weights.exists():
        pytest.skip("../shared/weights absent (only on the project's machines)")
    res = _bench(["--model", "ddrnet", "--weights", str(weights), "--data", "camvid", "--data-root", str(tiny_camvid)],
                 tmp_path, timeout=120)
    assert res.returncode == 2 and "does not fit" in res.stderr and "missing keys" in res.stderr


def test_official_void_output_is_scored_on_the_dataset_classes(tiny_camvid, tmp_path):
    """The official ESPNet CamVid weights have a 12th (void) output; mIoU is over CamVid's 11
    classes (a void prediction is wrong), not over 12 with a void 'class' of IoU 0 (which gave
    64.26 instead of 70.10 on CamVid val)."""
    weights = REPO.parent / "shared" / "weights" / "espnet_p_2_q_8_camvid.pth"
    if not weights.exists():
        pytest.skip("../shared/weights absent (only on the project's machines)")
    res = _bench(["--model", "espnet", "--weights", str(weights), "--data", "camvid", "--data-root", str(tiny_camvid),
                  "--quant", "fp32", "--backend", "onnxruntime", "--threads", "1", *FAST], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (rec,) = _records(tmp_path)
    assert rec["status"] == "ok", rec["error"]
    per_class = rec["metrics"]["per_class_iou"]
    assert list(per_class) == list(load_card("camvid").classes)
    present = [v for v in per_class.values() if v is not None]
    assert rec["metrics"]["miou"] == pytest.approx(sum(present) / len(present))


def test_static_and_dynamic_variants(tmp_path):
    from tests.conftest import write_segnet_split

    data = tmp_path / "camvid16"
    write_segnet_split(data, "train", 16, seed=3)  # calibration needs at least 16 images
    write_segnet_split(data, "val", 2, seed=4)
    res = _bench(["--model", "ddrnet", "--weights", "random", "--data", "camvid", "--data-root", str(data),
                  "--quant", "fp32", "static", "dynamic", "--backend", "torch", "onnxruntime",
                  "--calib-images", "16", "--calib-method", "minmax", *FAST], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    recs = {(r["variant"], r["backend"]): r for r in _records(tmp_path)}
    for key in [("fp32", "onnxruntime"), ("static", "onnxruntime"), ("dynamic", "onnxruntime"), ("dynamic", "torch"),
                ("static", "torch")]:
        assert recs[key]["status"] == "ok", (key, recs[key]["error"])
    static = recs[("static", "onnxruntime")]
    quant = static["artifact"]["quant"]
    assert quant["calibration"]["size"] == 16 and len(quant["calibration"]["sha256"]) == 64
    assert quant["graph"]["quantized_convs"] > 0 and quant["parent_sha256"]
    assert static["size_mb"] < 0.35 * recs[("fp32", "onnxruntime")]["size_mb"]
    assert "minmax" in static["quant_config"]
    dyn_torch = recs[("dynamic", "torch")]["artifact"]["quant"]
    # Conv-only network: PyTorch dynamic quantization leaves it float, and the record says so.
    assert dyn_torch["int8_modules"] == 0 and dyn_torch["is_int8"] is False
    assert recs[("dynamic", "onnxruntime")]["artifact"]["quant"]["int8_ops"]["ConvInteger"] > 0
    # PyTorch static INT8: FX-converted x86 kernels, converted once when the artifact was built and
    # stored as frozen TorchScript; the cell loads that file, and its size is the file's.
    torch_static = recs[("static", "torch")]
    assert torch_static["artifact"]["fx_int8"]["mode"] == "ptq" and "fx-minmax" in torch_static["quant_config"]
    assert torch_static["artifact"]["fx_int8"]["format"] == "torchscript"
    assert torch_static["artifact"]["size_basis"].startswith("TorchScript file")
    assert torch_static["size_mb"] < 0.35 * recs[("fp32", "torch")]["size_mb"]
    assert torch_static["runtime"]["int8_convert_s"] > 0 and torch_static["runtime"]["int8_convert_in"] == "artifact build"

"""Detection variants on PyTorch (issue #7 part 7): YOLOv5's box decode as an FX leaf, static
INT8 kernels, QAT through the detection trainer, QDQ export with a float decode, and the bench's
torch static / QAT artifacts for a detector."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from quant import fx_quant
from tests.conftest import REPO, shared_or_skip
from tests.test_det_train import _write_yolo_split
from zoo.det import yolov5 as y5

CARD = "tinydetq"


def _small(stem: str = "conv6x6", act: str = "silu", seed: int = 0) -> y5.YOLOv5:
    torch.manual_seed(seed)
    return y5.YOLOv5(num_classes=3, depth=0.33, width=0.125, stem=stem, act=act).eval()


# ---------------------------------------------------------------------------------------------
# FP32 is unchanged by the refactor


def _pre_refactor_detect(detect: y5.Detect, feats, training: bool):
    """`Detect.forward` as it was before the decode became `BoxDecode` (verbatim)."""
    maps = []
    for conv, x in zip(detect.m, feats):
        b, _, h, w = x.shape
        maps.append(conv(x).view(b, detect.na, detect.no, h, w).permute(0, 1, 3, 4, 2).contiguous())
    if training:
        return maps
    out = []
    for i, p in enumerate(maps):
        b, na, h, w, no = p.shape
        stride = detect.strides[i]
        ys = torch.arange(h, device=p.device, dtype=p.dtype)
        xs = torch.arange(w, device=p.device, dtype=p.dtype)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack((gx, gy), dim=-1).view(1, 1, h, w, 2)
        anchor_px = (detect.anchors[i] * stride).to(p.dtype).view(1, na, 1, 1, 2)
        s = p.sigmoid()
        xy = (s[..., 0:2] * 2 - 0.5 + grid) * stride
        wh = (s[..., 2:4] * 2) ** 2 * anchor_px
        out.append(torch.cat((xy, wh, s[..., 4:]), dim=-1).view(b, na * h * w, no))
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("source", ["conv6x6-silu", "focus-relu", "official"])
def test_fp32_outputs_are_the_pre_refactor_tensors(source):
    if source == "official":
        model = y5.load_official(shared_or_skip("weights", "yolov5n.pt"))  # strict load of the release
    else:
        model = _small(*source.split("-"))
    feats = []
    model.detect.register_forward_pre_hook(lambda m, args: feats.append(args[0]))
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for training in (False, True):
            model.train(training)
            got = model(x)
            ref = _pre_refactor_detect(model.detect, feats.pop(), training)
            if training:
                assert len(got) == 3 and all(torch.equal(g, r) for g, r in zip(got, ref))
            else:
                assert torch.equal(got, ref)
    assert "model.24.decode.anchors" not in model.state_dict() and "model.24.anchors" in model.state_dict()


# ---------------------------------------------------------------------------------------------
# FX static PTQ: INT8 convolutions everywhere, the decode a float leaf after a dequantize


def _decode_node(gm: torch.fx.GraphModule) -> torch.fx.Node:
    (node,) = [n for n in gm.graph.nodes
               if n.op == "call_module" and isinstance(gm.get_submodule(n.target), y5.BoxDecode)]
    return node


def test_static_int8_kernels_with_a_float_decode(tmp_path):
    from quant.calibrate import CalibrationData
    from quant.torch_ptq import load_static_torch, quantize_static_torch

    model = _small()
    rng = np.random.default_rng(0)
    arrays = [rng.random((1, 3, 64, 64), dtype=np.float32) for _ in range(4)]
    calib = CalibrationData(arrays=arrays, names=[str(i) for i in range(4)], sha256="x", dataset="random",
                            split="train", seed=0, input_hw=(64, 64))
    meta = quantize_static_torch(model, calib, tmp_path / "static.pt")
    assert meta["quantizers"]["activation_quantizers"] > 50 and meta["calibrated_batches"] == 4
    int8 = load_static_torch(model, tmp_path / "static.pt", reduce_range=meta["reduce_range"])
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert fx_quant.count_int8_modules(int8) == {"int8_modules": convs, "float_convs": 0}
    decode = _decode_node(int8)
    assert [a.target for a in decode.args[1:]] == ["dequantize"] * 3  # the Detect convs' INT8 outputs
    assert [u.op for u in decode.users] == ["output"]                 # nothing quantizes the boxes
    x = torch.from_numpy(np.concatenate(arrays[:2]))
    with torch.no_grad():
        ref, got = model(x), int8(x)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    # INT8 gives ~0.03 px and ~0.002; another random network of this shape differs by ~0.5 px and ~0.05
    assert (got[..., :2] - ref[..., :2]).abs().median() < 0.15  # box centres, pixels
    assert (got[..., 4:] - ref[..., 4:]).abs().max() < 0.01     # probabilities
    with pytest.raises(ValueError, match="multiples of 32"):  # the size check survives tracing
        int8(torch.rand(1, 3, 64, 72))


def test_int8_torchscript_is_the_converted_model(tmp_path):
    """The frozen TorchScript the bench stores for PyTorch INT8 gives the converted model's output
    (the float decode included) after loading in place of FX conversion."""
    from quant.calibrate import CalibrationData
    from quant.torch_ptq import load_static_torch, quantize_static_torch

    model = _small(act="relu")
    rng = np.random.default_rng(0)
    arrays = [rng.random((1, 3, 64, 64), dtype=np.float32) for _ in range(4)]
    calib = CalibrationData(arrays=arrays, names=[str(i) for i in range(4)], sha256="x", dataset="random",
                            split="train", seed=0, input_hw=(64, 64))
    meta = quantize_static_torch(model, calib, tmp_path / "static.pt")
    int8 = load_static_torch(model, tmp_path / "static.pt", reduce_range=meta["reduce_range"])
    x = torch.from_numpy(np.concatenate(arrays[:2]))
    info = fx_quant.save_torchscript(int8, tmp_path / "int8.ts", x)
    assert info["bit_exact"] and info["input_shape"] == [2, 3, 64, 64]
    loaded = torch.jit.load(str(tmp_path / "int8.ts"))
    with torch.no_grad():
        assert torch.equal(loaded(x), int8(x))
    assert "quantized::conv2d" in str(loaded.inlined_graph)  # INT8 kernels, not a float copy


def test_torch_backend_builds_the_network_the_checkpoint_was_trained_as(tmp_path):
    """A ReLU YOLOv5n checkpoint runs as a ReLU YOLOv5n on the torch backend (FP32, and static INT8
    converted in the cell, the fallback when TorchScript export fails), not as the registry's
    default SiLU network its weights also fit."""
    from bench.backends import get_backend
    from bench.runner import BenchConfig, prepare_model
    from quant.calibrate import CalibrationData
    from quant.torch_ptq import load_static_torch, quantize_static_torch
    from zoo.checkpoints import save_checkpoint

    torch.manual_seed(0)
    net = y5.yolov5n(num_classes=5, act="relu").eval()
    ckpt = tmp_path / "relu.pt"
    save_checkpoint(ckpt, {"model": net.state_dict(),
                           "meta": {"model": "yolov5n", "build_kwargs": {"stem": "conv6x6", "act": "relu"}}})
    cfg = BenchConfig(models=["yolov5n"], data="synthetic-det", weights=str(ckpt), artifacts=str(tmp_path / "art"),
                      threads=1, progress=False)
    prep = prepare_model(cfg, "yolov5n")
    assert prep.torch_artifact["build_kwargs"] == {"stem": "conv6x6", "act": "relu"}
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    silu = y5.yolov5n(num_classes=5).eval()
    silu.load_state_dict(net.state_dict())  # the weights fit the default network too
    with torch.no_grad():
        ref, wrong = net(torch.from_numpy(x)).numpy(), silu(torch.from_numpy(x)).numpy()
    assert not np.allclose(ref, wrong)
    fp32 = get_backend("torch")()
    fp32.load(prep.torch_artifact, threads=1)
    np.testing.assert_array_equal(fp32.infer(x), ref)

    calib = CalibrationData(arrays=[x] * 2, names=["a", "b"], sha256="x", dataset="random", split="train", seed=0,
                            input_hw=(64, 64))
    meta = quantize_static_torch(net, calib, tmp_path / "static.pt", build_kwargs=prep.build_kwargs())
    art = {"kind": "torch", "path": str(tmp_path / "static.pt"), "model": "yolov5n", "num_classes": 5,
           "fx_int8": {"mode": "ptq", "format": "fx-state", "reduce_range": meta["reduce_range"],
                       "build_kwargs": meta["build_kwargs"]}}
    int8 = get_backend("torch")()
    int8.load(art, threads=1)
    with torch.no_grad():
        direct = load_static_torch(net, tmp_path / "static.pt", reduce_range=meta["reduce_range"])(torch.from_numpy(x))
    np.testing.assert_array_equal(int8.infer(x), direct.numpy())
    assert int8.info()["int8_convert_in"] == "cell"


# ---------------------------------------------------------------------------------------------
# QAT through the detection trainer


@pytest.fixture(scope="module")
def tiny_det(tmp_path_factory):
    """(data root, artifacts, FP32 result, QAT result): a 2-class 64x64 YOLO set, one FP32 epoch,
    two QAT epochs (BN and ranges frozen from the second)."""
    from quant.qat import QATConfig, qat_finetune
    from zoo.det.train import DetTrainConfig, train_detector

    base = tmp_path_factory.mktemp("tinydetq")
    root, cards, artifacts = base / "data", base / "cards", base / "artifacts"
    _write_yolo_split(root, "train", 4, seed=1)
    _write_yolo_split(root, "val", 2, seed=2)
    cards.mkdir()
    (cards / f"{CARD}.yaml").write_text(
        f"name: {CARD}\ntask: detection\nformat: yolo\nclasses: [car, widget]\nnum_classes: 2\n"
        f"input_size: [64, 64]\ndefault_root: {root}\nsplits: [train, val]\n")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEZOO_DATASETS_DIR", str(cards))
    common = dict(data=CARD, data_root=root, batch_size=2, eval_every=1, workers=0, threads=1,
                  artifacts=artifacts, progress=False)
    fp32 = train_detector(DetTrainConfig(model="yolov5n", recipe="quick", epochs=1, img_size=64, **common))
    qat = qat_finetune(QATConfig(model="yolov5n", epochs=2, crop=(64, 64), freeze_bn_epoch=1,
                                 freeze_observer_epoch=1, **common))
    yield root, cards, artifacts, fp32, qat
    mp.undo()


def test_qat_detector_checkpoint_provenance_and_schedule(tiny_det):
    from quant.qat import find_qat_checkpoint
    from zoo.checkpoints import load_weights, read_checkpoint
    from zoo.recipes import get_det_recipe
    from zoo.registry import get_entry

    _, _, artifacts, fp32, qat = tiny_det
    meta = read_checkpoint(qat["best"])["meta"]
    q = meta["qat"]
    parent = load_weights(get_entry("yolov5n"), fp32["best"], num_classes=2)
    # One folder per FP32 parent: qat-<parent recipe>-<parent sha256[:12]>.
    assert qat["best"].parent.name == f"qat-quick-{parent.sha256[:12]}"
    assert find_qat_checkpoint("yolov5n", CARD, artifacts) == qat["best"]
    assert find_qat_checkpoint("yolov5n", CARD, artifacts, parent_sha256=parent.sha256) == qat["best"]
    assert find_qat_checkpoint("yolov5n", CARD, artifacts, parent_sha256="0" * 64) is None
    assert q["parent"]["sha256"] == parent.sha256 and q["parent"]["recipe"] == "quick"
    assert meta["init"]["path"] == str(fp32["best"]) and meta["init"]["head"] == "kept (same classes)"
    assert q["build_kwargs"] == meta["build_kwargs"] == {"stem": "conv6x6", "act": "silu"}
    assert (q["freeze_bn_epoch"], q["freeze_observer_epoch"]) == (1, 1) and q["scheme"] == "symmetric"
    quick = get_det_recipe("quick")
    assert meta["recipe"]["lr"] == pytest.approx(quick.lr / 10) and meta["recipe"]["warmup_epochs"] == 0
    # "Epoch 0" validates the calibrated graph before any step (4 train images, letterboxed square).
    assert meta["task"] == "detection" and [h["epoch"] for h in qat["history"]] == [0, 1, 2]
    assert all("map" in h for h in qat["history"]) and qat["history"][0]["loss"] is None
    assert q["calibration"]["size"] == 4 and q["calibration"]["input_hw"] == [64, 64]
    assert read_checkpoint(qat["best"])["meta"]["epoch"] in (0, 1, 2)
    # ranges calibrated, observed in epoch 1, frozen for epoch 2, in the model and in its EMA
    last = read_checkpoint(qat["last"])
    for state in (last["model"], last["ema"]["model"]):
        flags = [v for k, v in state.items() if k.endswith("observer_enabled")]
        assert len(flags) > 50 and all(int(f) == 0 for f in flags)
        scales = [v for k, v in state.items() if k.endswith("activation_post_process_0.scale")]
        assert scales and all(float(s.reshape(-1)[0]) != 1.0 for s in scales)  # 1.0: never observed
        zps = {int(v.reshape(-1)[0]) for k, v in state.items()
               if k.endswith(".zero_point") and "weight_fake_quant" not in k}
        assert zps == {128}  # symmetric int8 as quint8, copied into the EMA (not averaged)


def test_qat_detector_exports_qdq_with_a_float_decode_and_converts(tiny_det, tmp_path):
    import onnx
    import onnxruntime as ort

    from quant.qat import load_qat

    _, _, _, _, qat = tiny_det
    model, _ = load_qat("yolov5n", qat["best"], num_classes=2)
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x)
    assert ref.shape == (2, 3 * (8 * 12 + 4 * 6 + 2 * 3), 7)

    path = tmp_path / "qat.onnx"
    info = fx_quant.export_qdq_onnx(model, path, input_hw=(64, 96), batch=2)
    convs = info["graph"]["convs"]
    assert convs == info["graph"]["quantized_convs"] > 50
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    # ORT and PyTorch's fake quantization round a few ties differently: one step of a Detect
    # conv's output grid (~0.015 in probability) on a few percent of the values, the rest equal.
    close = np.isclose(got, ref.numpy(), rtol=1e-4, atol=1e-4)
    assert close.mean() > 0.85, close.mean()
    assert np.abs(got[..., 4:] - ref[..., 4:].numpy()).max() < 0.03

    # From the output back to the first DequantizeLinear: the decode, all float.
    proto = onnx.load(str(path))
    producer = {o: n for n in proto.graph.node for o in n.output}
    decode, edge, todo = [], [], [proto.graph.output[0].name]
    while todo:
        node = producer.get(todo.pop())
        if node is None or node in decode or node in edge:
            continue
        if node.op_type == "DequantizeLinear":
            edge.append(node)
            continue
        decode.append(node)
        todo.extend(node.input)
    ops = {n.op_type for n in decode}
    assert "Sigmoid" in ops and "QuantizeLinear" not in ops and "Conv" not in ops
    assert len(edge) == 3  # the three Detect convs' quantized outputs, dequantized
    for dq in edge:
        assert producer[producer[dq.input[0]].input[0]].op_type == "Conv"

    int8 = fx_quant.convert_int8(model)
    assert fx_quant.count_int8_modules(int8) == {"int8_modules": convs, "float_convs": 0}
    with torch.no_grad():
        q = int8(x)
    assert (q[..., 4:] - ref[..., 4:]).abs().max() < 0.05


def test_qat_cli_resumes_a_killed_detector_run(tiny_det, tmp_path):
    root, cards, artifacts, _, _ = tiny_det
    mine = tmp_path / "artifacts"
    shutil.copytree(artifacts / "checkpoints" / "yolov5n" / CARD / "quick",
                    mine / "checkpoints" / "yolov5n" / CARD / "quick")  # the FP32 parent only
    args = [sys.executable, "-m", "quant.qat", "--model", "yolov5n", "--data", CARD, "--data-root", str(root),
            "--epochs", "2", "--batch-size", "2", "--crop", "64", "64", "--eval-every", "1", "--workers", "0",
            "--threads", "1", "--no-progress", "--artifacts", str(mine)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEZOO_DATASETS_DIR": str(cards)}
    # 2 steps per epoch: die at step 3 (epoch 2), after epoch 1's end-of-epoch save
    killed = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**env, "EDGEZOO_FAULT_KILL_AT_STEP": "3"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    from zoo.io import sha256_file

    parent_sha = sha256_file(mine / "checkpoints" / "yolov5n" / CARD / "quick" / "best.pt")
    last = mine / "checkpoints" / "yolov5n" / CARD / f"qat-quick-{parent_sha[:12]}" / "last.pt"
    assert last.is_file()
    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr and "epoch 2, step 0/2" in resumed.stderr
    assert "[qat] best val mAP50-95" in resumed.stderr
    # epoch 0 (the calibrated graph) ran once, in the killed run; the resumed run did not repeat it
    assert [h["epoch"] for h in json.loads((last.parent / "history.json").read_text())] == [0, 1, 2]
    assert "epoch 0 (before training)" not in resumed.stderr


def test_qat_refuses_a_parent_with_other_classes(tiny_det, tmp_path):
    from quant.calibrate import QuantError
    from quant.qat import QATConfig, qat_finetune

    root, _, _, _, _ = tiny_det
    from zoo.checkpoints import save_checkpoint

    torch.manual_seed(0)
    other = tmp_path / "coco80.pt"
    save_checkpoint(other, {"model": y5.yolov5n(num_classes=80).state_dict(),
                            "meta": {"model": "yolov5n", "num_classes": 80}})
    with pytest.raises(QuantError, match="2 classes") as exc:
        qat_finetune(QATConfig(model="yolov5n", data=CARD, data_root=root, weights=other, artifacts=tmp_path))
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------------------------------------
# the bench's artifacts for detection cells


def test_bench_makes_torch_static_and_qat_artifacts_for_a_detector(tiny_det, tmp_path):
    from bench.backends import get_backend
    from bench.runner import BenchConfig, Prepared, variant_support
    from zoo.checkpoints import load_weights
    from zoo.registry import get_entry

    root, _, artifacts, fp32, _ = tiny_det
    cfg = BenchConfig(models=["yolov5n"], data=CARD, data_root=str(root), artifacts=str(artifacts),
                      calib_images=4, threads=1, progress=False)
    for variant in ("static", "qat"):
        assert variant_support(variant, get_backend("torch"), cfg) == (True, "")
    assert not variant_support("qat", get_backend("torch"), BenchConfig(models=["yolov5n"], data=CARD,
                                                                           weights="random"))[0]
    loaded = load_weights(get_entry("yolov5n"), fp32["best"], num_classes=2)
    net = loaded.model.eval()
    prep = Prepared(model="yolov5n", num_classes=2, preprocess=loaded.preprocess, weights_path=str(fp32["best"]),
                    weights_sha256=loaded.sha256, weights_meta={}, net=net, export_dir=tmp_path,
                    torch_artifact={}, params=0, task="detection")
    hw, log, x = (64, 64), lambda m: None, np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())

    static = prep.variant_artifact(cfg, "torch", "static", "torch", hw, 1, log)
    assert static["fx_int8"]["build_kwargs"] == {"stem": "conv6x6", "act": "silu"}
    # --calib-method unset: a detector on PyTorch calibrates with entropy (HistogramObserver; on
    # ONNX Runtime it would be percentile), and the file name says so.
    assert static["quant"]["method"] == static["fx_int8"]["calib_method"] == "entropy"
    assert static["quant"]["observer"] == "HistogramObserver" and "static_fx-entropy-" in static["fx_int8"]["source"]
    assert static["quant"]["int8_modules"] == convs and static["quant"]["float_convs"] == 0
    # Converted once here and stored as TorchScript: the record's size is that file's.
    assert static["fx_int8"]["format"] == "torchscript" and static["fx_int8"]["parity"]["bit_exact"]
    assert static["fx_int8"]["convert_s"] > 0 and static["path"].endswith("_b1.int8.ts")
    assert static["bytes"] == os.path.getsize(static["path"]) and static["size_basis"].startswith("TorchScript")
    assert static["quant"]["calibration"]["size"] == 4  # det_calibration: letterboxed train images
    qat_torch = prep.variant_artifact(cfg, "torch", "qat", "torch", hw, 1, log)  # the cached QAT checkpoint
    assert qat_torch["quant"]["int8_modules"] == convs and qat_torch["quant"]["val_map50_95_at_training"] is not None
    assert qat_torch["fx_int8"]["format"] == "torchscript" and qat_torch["fx_int8"]["parity"]["bit_exact"]
    qat_ort = prep.variant_artifact(cfg, "onnx", "qat", "onnxruntime", hw, 1, log)
    assert qat_ort["quant"]["graph"]["quantized_convs"] == convs
    outputs = []
    for art, backend in ((static, "torch"), (qat_torch, "torch"), (qat_ort, "onnxruntime")):
        runner = get_backend(backend)()
        runner.load(art, threads=1)
        outputs.append(runner.infer(x))
        assert outputs[-1].shape == (1, 3 * (64 + 16 + 4), 7)
    assert runner.info()["providers"][0] == "CPUExecutionProvider"
    np.testing.assert_allclose(outputs[1][..., 4:], outputs[2][..., 4:], atol=0.05)  # QAT: torch INT8 ~ ORT QDQ

    # The TorchScript artifact is the model the former in-cell conversion gave, bit for bit ...
    from quant.torch_ptq import load_static_torch

    with torch.no_grad():
        converted = load_static_torch(net, static["fx_int8"]["source"], reduce_range=static["fx_int8"]["reduce_range"])
        np.testing.assert_array_equal(outputs[0], converted(torch.from_numpy(x)).numpy())
    # ... and where the export fails, the cell converts the observer state itself, with the reason.
    def refuse(*args, **kwargs):
        raise RuntimeError("tracing refused\nsecond line")

    mp = pytest.MonkeyPatch()
    mp.setattr(fx_quant, "save_torchscript", refuse)
    try:
        prep.quantized.clear()
        prep.export_dir = tmp_path / "fallback"
        fallback = prep.variant_artifact(cfg, "torch", "static", "torch", hw, 1, log)
    finally:
        mp.undo()
    assert fallback["fx_int8"]["format"] == "fx-state" and fallback["path"].endswith(".pt")
    assert fallback["fx_int8"]["torchscript_error"] == "RuntimeError: tracing refused"
    assert fallback["size_basis"].startswith("converted INT8 state dict")
    # The failure is remembered for this observer state: the next sweep neither converts nor traces.
    def must_not_run(*args, **kwargs):
        raise AssertionError("converted or traced again")

    mp = pytest.MonkeyPatch()
    mp.setattr(fx_quant, "save_torchscript", must_not_run)
    mp.setattr(fx_quant, "count_int8_modules", must_not_run)
    try:
        prep.quantized.clear()
        again = prep.variant_artifact(cfg, "torch", "static", "torch", hw, 1, log)
    finally:
        mp.undo()
    assert {k: again[k] for k in ("path", "bytes", "fx_int8")} == {k: fallback[k] for k in ("path", "bytes", "fx_int8")}
    assert again["quant"]["int8_modules"] == fallback["quant"]["int8_modules"]
    runner = get_backend("torch")()
    runner.load(fallback, threads=1)
    np.testing.assert_array_equal(runner.infer(x), outputs[0])
    assert runner.info()["int8_convert_in"] == "cell" and runner.info()["int8_torchscript_error"]
    # The traced graph is fixed at its input shape: another shape is a one-line error, not wrong boxes.
    scripted = get_backend("torch")()
    scripted.load(static, threads=1)
    with pytest.raises(ValueError, match=r"traced for input shape \[1, 3, 64, 64\], got \[1, 3, 96, 96\]"):
        scripted.infer(np.zeros((1, 3, 96, 96), np.float32))

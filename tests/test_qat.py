"""Quantization-aware training end to end on tiny data: fine-tune, rebuild, export, run INT8."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from quant import fx_quant
from quant.qdq_onnx import _constant_values
from quant.qat import QATConfig, find_qat_checkpoint, load_qat, qat_finetune, schedule
from quant.calibrate import QuantError
from zoo.train import TrainConfig, train

TINY = dict(batch_size=2, crop=(64, 96), workers=0, progress=False, threads=1)


@pytest.fixture(scope="module")
def fp32_and_qat(tiny_camvid, tmp_path_factory):
    artifacts = tmp_path_factory.mktemp("qat_artifacts")
    fp32 = train(TrainConfig(model="ddrnet", data="camvid", data_root=tiny_camvid, recipe="quick", epochs=2,
                             eval_every=1, artifacts=artifacts, **TINY))
    qat = qat_finetune(QATConfig(model="ddrnet", data="camvid", data_root=tiny_camvid, epochs=2, eval_every=1,
                                 freeze_bn_epoch=0, freeze_observer_epoch=1, artifacts=artifacts, **TINY))
    return artifacts, fp32, qat


def _images(n=3, hw=(64, 96)):
    torch.manual_seed(0)
    return torch.randn(n, 3, *hw)


def test_schedule_defaults_and_bounds():
    assert schedule(30, None, None) == (10, 15)
    assert schedule(2, None, None) == (1, 1)
    with pytest.raises(QuantError, match="freeze epochs"):
        schedule(4, 9, None)


def test_qat_checkpoint_has_provenance_and_rebuilds(fp32_and_qat, tiny_camvid):
    artifacts, fp32, qat = fp32_and_qat
    path = find_qat_checkpoint("ddrnet", "camvid", artifacts)
    assert path == qat["best"] and path.parent.name == "qat-quick"
    model, meta = load_qat("ddrnet", path, num_classes=11)
    q = meta["qat"]
    assert q["scheme"] == "symmetric" and q["parent"]["sha256"] and q["freeze_bn_epoch"] == 0
    assert meta["recipe"]["epochs"] == 2 and meta["recipe"]["lr"] == pytest.approx(2e-4)
    counts = fx_quant.count_quantizers(model)
    assert counts["weight_quantizers"] > 20 and counts["activation_quantizers"] > 20
    # Every activation quantizer is symmetric uint8 around 128 (= int8 for TensorRT).
    zps = {int(m.zero_point.reshape(-1)[0]) for n, m in model.named_modules()
           if isinstance(m, torch.ao.quantization.FakeQuantizeBase) and not n.endswith("weight_fake_quant")}
    assert zps == {128}


def _conv_weights_are_int8(proto: onnx.ModelProto) -> None:
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert convs
    for conv in convs:
        dq = producer.get(conv.input[1])
        assert dq is not None and dq.op_type == "DequantizeLinear", f"{conv.name}: float weight"
        assert inits[dq.input[0]].dtype == np.int8


@pytest.mark.parametrize("target", ["ort", "trt"])
def test_export_qdq_runs_in_onnxruntime_and_matches_fake_quant(fp32_and_qat, tmp_path, target):
    import onnxruntime as ort

    _, _, qat = fp32_and_qat
    model, _ = load_qat("ddrnet", qat["best"], num_classes=11)
    out = tmp_path / f"qat_{target}.onnx"
    info = fx_quant.export_qdq_onnx(model, out, input_hw=(64, 96), target=target)
    proto = onnx.load(str(out))
    _conv_weights_are_int8(proto)
    assert info["folded_weights"] == sum(1 for n in proto.graph.node if n.op_type == "Conv")
    values = _constant_values(proto)
    act_zps = [values[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert act_zps
    if target == "trt":  # TensorRT: int8, zero point 0 everywhere
        assert info["recoded_zero_points"] >= 1
        assert all(z.dtype == np.int8 and not z.any() for z in act_zps)
    else:  # as trained: uint8 around 128, ReLU outputs re-encoded with zero point 0 (ORT fuses them)
        assert all(z.dtype == np.uint8 and int(z) in (0, 128) for z in act_zps)
        assert info["recoded_zero_points"] == sum(int(z) == 0 for z in act_zps) > 0
    x = _images()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {"input": x[i:i + 1].numpy()})[0] for i in range(len(x))])
    with torch.no_grad():
        ref = model(x).numpy()
    assert (got.argmax(1) == ref.argmax(1)).mean() > 0.95


def test_pytorch_int8_kernels_agree_with_fake_quant(fp32_and_qat):
    _, _, qat = fp32_and_qat
    model, _ = load_qat("ddrnet", qat["best"], num_classes=11)
    int8 = fx_quant.convert_int8(model)
    assert any("quantized" in type(m).__module__ for m in int8.modules())
    x = _images()
    with torch.no_grad():
        ref, got = model(x), int8(x)
    assert (got.argmax(1) == ref.argmax(1)).float().mean() > 0.95


def test_load_qat_refuses_an_fp32_checkpoint(fp32_and_qat):
    from zoo.checkpoints import CheckpointError

    _, fp32, _ = fp32_and_qat
    with pytest.raises(CheckpointError, match="not a QAT checkpoint"):
        load_qat("ddrnet", fp32["best"], num_classes=11)


def test_qat_without_parent_gives_one_line_error(tmp_path):
    from zoo.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="no FP32 checkpoint"):
        qat_finetune(QATConfig(model="ddrnet", data="camvid", data_root=tmp_path, artifacts=tmp_path, **TINY))


def test_zoo_load_gives_every_variant_on_its_backend(fp32_and_qat, tiny_camvid):
    import zoo

    artifacts, fp32, qat = fp32_and_qat
    common = dict(dataset="camvid", data_root=tiny_camvid, artifacts=artifacts, weights=fp32["best"],
                  input_hw=(64, 96), threads=1, progress=False)
    x = _images(1).numpy()
    q = zoo.load("ddrnet", "qat", backend="torch", **common)
    assert q.artifact["quant"]["checkpoint"] == str(qat["best"]) and q.artifact["quant"]["parent_sha256"]
    # Converted once into a frozen TorchScript file of INT8 kernels, which the backend loads as is.
    assert q.path.suffix == ".ts" and q.artifact["fx_int8"]["format"] == "torchscript"
    assert "quantized::conv2d" in str(q.model.inlined_graph)
    assert q.runner.infer(x).shape == (1, 11, 64, 96)
    dyn = zoo.load("ddrnet", "dynamic", backend="onnxruntime", **common)
    assert dyn.path.suffix == ".onnx" and dyn.runner.infer(x).shape == (1, 11, 64, 96)
    qdq = zoo.load("ddrnet", "qat", backend="onnxruntime", **common)
    assert qdq.artifact["quant"]["target"] == "ort" and qdq.runner.infer(x).shape == (1, 11, 64, 96)
    with pytest.raises(ValueError, match="valid variants"):
        zoo.load("ddrnet", "int4", backend="torch", **common)


def _qat_cases():
    from zoo import registry

    # ESPNet runs by default (ConvTranspose-BN folding, PReLU); the rest are slow-marked.
    return [pytest.param(n, marks=[] if n == "espnet_p2q8" else [pytest.mark.slow])
            for n in registry.list_models(task="segmentation")]


@pytest.mark.parametrize("name", _qat_cases())
def test_every_network_prepares_for_qat_exports_qdq_and_converts(name, tmp_path):
    from zoo import registry

    entry = registry.get_entry(name)
    torch.manual_seed(0)
    model = entry.build(num_classes=11, **({"aux": False} if entry.aux_weights else {}))
    prepared = fx_quant.prepare(model, qat=True, input_hw=(64, 64))
    prepared.train()
    prepared(torch.randn(2, 3, 64, 64))
    prepared.eval()
    fx_quant.freeze_observers(prepared)
    info = fx_quant.export_qdq_onnx(prepared, tmp_path / "q.onnx", input_hw=(64, 64))
    assert info["graph"]["quantized_convs"] > 0.8 * (info["graph"]["quantized_convs"] + info["graph"]["float_convs"])
    int8 = fx_quant.convert_int8(prepared)
    with torch.no_grad():
        assert int8(torch.randn(1, 3, 64, 64)).shape == (1, 11, 64, 64)

"""YOLOv5 family: structure, outputs, ONNX parity, and the restricted import of official checkpoints."""
from __future__ import annotations

import io
import json
import os
import sys
import types
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from tests.conftest import shared_or_skip
from zoo import registry
from zoo.checkpoints import CheckpointError, load_weights
from zoo.det import yolov5 as y5
from zoo.det.pickle_import import UnsafeCheckpointError
from zoo.profile import count_gmacs, count_params


def _n_boxes(h: int, w: int) -> int:
    return 3 * sum((h // s) * (w // s) for s in (8, 16, 32))


@pytest.fixture(scope="module")
def tiny_n() -> y5.YOLOv5:
    torch.manual_seed(0)
    return y5.yolov5n(num_classes=3)


@pytest.mark.parametrize("name", ["yolov5n", "yolov5s"])
def test_params_and_macs_match_published(name):
    entry = registry.get_entry(name)
    pub = entry.published
    with torch.device("meta"):
        model = entry.build(num_classes=pub.num_classes)
    assert count_params(model) / 1e6 == pytest.approx(pub.params_m, rel=0.02)
    assert count_gmacs(model, pub.gmacs_hw) == pytest.approx(pub.gmacs, rel=0.05)
    assert entry.task == "detection" and entry.family == "yolov5"


def test_alias_and_registry():
    assert registry.resolve("yolov5") == "yolov5n"
    assert {"yolov5n", "yolov5s"} <= set(registry.list_models(task="detection"))


def test_official_key_names(tiny_n):
    keys = set(tiny_n.state_dict())
    for k in ("model.0.conv.weight", "model.2.cv1.conv.weight", "model.2.m.0.cv1.bn.running_mean",
              "model.9.cv2.bn.weight", "model.24.m.0.weight", "model.24.m.2.bias", "model.24.anchors"):
        assert k in keys, k
    bn = tiny_n.model[0].bn
    assert (bn.eps, bn.momentum) == (1e-3, 0.03)
    assert tiny_n.model[24].anchors.shape == (3, 3, 2)


def test_stem_and_act_options():
    with torch.device("meta"):
        conv6 = y5.yolov5n()
        focus = y5.yolov5n(stem="focus")
        relu = y5.yolov5n(act="relu")
    assert "model.0.conv.conv.weight" in focus.state_dict() and "model.0.conv.weight" not in focus.state_dict()
    assert focus.model[0].conv.conv.in_channels == 12 and focus.model[0].conv.conv.kernel_size == (3, 3)
    assert conv6.model[0].conv.kernel_size == (6, 6) and conv6.model[0].conv.padding == (2, 2)
    assert not any(isinstance(m, nn.SiLU) for m in relu.modules())
    assert any(isinstance(m, nn.ReLU) for m in relu.modules())
    assert set(relu.state_dict()) == set(conv6.state_dict())  # activations carry no weights
    with pytest.raises(ValueError, match="stem"):
        y5.yolov5n(stem="bogus")
    with pytest.raises(ValueError, match="act"):
        y5.yolov5n(act="gelu")


def test_detect_bias_prior(tiny_n):
    # Official prior: objectness log(8 / (640 / s)^2), classes log(0.6 / (nc - 0.99)), on top of
    # PyTorch's default uniform bias init (|b| <= 1/sqrt(fan_in)).
    det = tiny_n.model[24]
    for conv, s in zip(det.m, (8, 16, 32)):
        b = conv.bias.detach().view(3, -1)
        bound = 1 / conv.in_channels ** 0.5 + 1e-6
        assert (b[:, 4] - np.log(8 / (640 / s) ** 2)).abs().max() <= bound
        assert (b[:, 5:] - np.log(0.6 / (3 - 0.99))).abs().max() <= bound


@pytest.mark.parametrize("hw", [(64, 64), (64, 128)])
def test_eval_and_train_outputs(tiny_n, hw):
    x = torch.rand(2, 3, *hw)
    with torch.no_grad():
        out = tiny_n.eval()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, _n_boxes(*hw), 5 + 3)
    assert torch.isfinite(out).all() and (out[..., 4:] >= 0).all() and (out[..., 4:] <= 1).all()
    maps = tiny_n.train()(x)
    tiny_n.eval()
    assert isinstance(maps, list) and len(maps) == 3
    for m, s in zip(maps, (8, 16, 32)):
        assert m.shape == (2, 3, hw[0] // s, hw[1] // s, 8)


def test_input_not_multiple_of_32_is_one_line_error(tiny_n):
    with pytest.raises(ValueError, match="multiples of 32") as info:
        tiny_n.eval()(torch.rand(1, 3, 64, 72))
    assert "\n" not in str(info.value)


def test_onnx_export_matches_pytorch(tiny_n):
    ort = pytest.importorskip("onnxruntime")
    model = tiny_n.eval()
    x = torch.rand(1, 3, 64, 96)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(model, (x,), buf, opset_version=17, dynamo=False,
                          input_names=["images"], output_names=["boxes"])
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    assert got.shape == ref.shape == (1, _n_boxes(64, 96), 8)
    # Box sizes reach hundreds of pixels (anchors up to 373 px), hence a relative tolerance.
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


# --- official checkpoint import -------------------------------------------------------------------

def _letterbox_640(path) -> tuple[torch.Tensor, float]:
    """Resize the long side to 640 and pad bottom/right with grey 114 (the official pad value)."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    r = 640 / max(w, h)
    image = image.resize((round(w * r), round(h * r)), Image.BILINEAR)
    canvas = np.full((640, 640, 3), 114, np.uint8)
    canvas[: image.size[1], : image.size[0]] = np.asarray(image)
    return torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 255, r


def _iou_xyxy(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_official_checkpoint_loads_and_detects():
    weights = shared_or_skip("weights", "yolov5n.pt")
    root = shared_or_skip("data", "coco-tiny")
    entry = registry.get_entry("yolov5")
    loaded = load_weights(entry, weights, num_classes=80)
    assert loaded.num_classes == 80 and loaded.meta["stride"] == [8.0, 16.0, 32.0]
    assert loaded.meta["classes"][0] == "person" and loaded.meta["build_kwargs"] == {"stem": "conv6x6", "act": "silu"}
    assert loaded.preprocess == {"bgr": False, "mean": [0.0] * 3, "std": [1.0] * 3, "scale": 1 / 255}
    assert next(loaded.model.parameters()).dtype == torch.float32

    # A large bus in 000000359937.jpg: the best box must be a confident bus overlapping its ground truth.
    name = "000000359937.jpg"
    coco = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    image_id = next(i["id"] for i in coco["images"] if i["file_name"] == name)
    bus_id = next(c["id"] for c in coco["categories"] if c["name"] == "bus")
    gt = [a["bbox"] for a in coco["annotations"] if a["image_id"] == image_id and a["category_id"] == bus_id]
    x, r = _letterbox_640(root / "val2017" / name)
    model = loaded.model.eval()
    with torch.no_grad():
        out = model(x)[0]
    scores = out[:, 4:5] * out[:, 5:]
    best = int(scores.max(1).values.argmax())
    assert float(scores[best].max()) > 0.5
    assert loaded.meta["classes"][int(scores[best].argmax())] == "bus"
    cx, cy, w, h = out[best, :4].tolist()
    box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]) / r
    assert max(_iou_xyxy(box, np.array([gx, gy, gx + gw, gy + gh])) for gx, gy, gw, gh in gt) > 0.7


def test_official_checkpoint_for_the_wrong_size_is_refused():
    weights = shared_or_skip("weights", "yolov5n.pt")
    assert y5.load_official(weights).model[0].conv.out_channels == 16  # the size it was trained as
    with pytest.raises(CheckpointError, match="pass --model yolov5n"):
        load_weights(registry.get_entry("yolov5s"), weights, num_classes=80)
    with pytest.raises(CheckpointError, match="act='silu'"):
        load_weights(registry.get_entry("yolov5n"), weights, num_classes=80, act="relu")


class _Exploit:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_pickle_is_refused_without_side_effect(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "yolov5n.pt"
    torch.save({"model": _Exploit(f"touch {marker}"), "weights": torch.zeros(2)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system|os\.system") as info:
        load_weights(registry.get_entry("yolov5n"), path, num_classes=80)
    assert "\n" not in str(info.value)
    assert not marker.exists()


@pytest.fixture
def fake_ultralytics(monkeypatch):
    """Importable `models.common` / `models.yolo` modules, so torch.save can pickle objects under
    the ultralytics class names (the test never needs the real code base)."""
    common, yolo = types.ModuleType("models.common"), types.ModuleType("models.yolo")
    pkg = types.ModuleType("models")
    pkg.common, pkg.yolo = common, yolo
    for mod in (pkg, common, yolo):
        monkeypatch.setitem(sys.modules, mod.__name__, mod)

    def cls(module: types.ModuleType, name: str) -> type:
        made = type(name, (nn.Module,), {"__module__": module.__name__})
        setattr(module, name, made)
        return made

    return {n: cls(common, n) for n in ("Conv", "C2f")} | {n: cls(yolo, n) for n in ("Model", "Detect")}


def test_unknown_global_class_is_refused_by_name(tmp_path, fake_ultralytics):
    path = tmp_path / "yolov8n.pt"
    model = fake_ultralytics["Model"]()
    model.model = nn.Sequential(fake_ultralytics["C2f"]())
    torch.save({"model": model}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"models\.common\.C2f"):
        load_weights(registry.get_entry("yolov5n"), path, num_classes=80)


def test_checkpoint_of_another_structure_lists_keys(tmp_path, fake_ultralytics):
    conv = fake_ultralytics["Conv"]()
    conv.conv, conv.bn, conv.act = nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.SiLU()
    detect = fake_ultralytics["Detect"]()
    detect.nc, detect.m = 80, nn.ModuleList([nn.Conv2d(8, 255, 1)])
    detect.register_buffer("anchors", torch.ones(1, 3, 2))
    model = fake_ultralytics["Model"]()
    model.model = nn.Sequential(conv, detect)
    path = tmp_path / "odd.pt"
    torch.save({"model": model.half()}, path)
    with pytest.raises(CheckpointError, match=r"missing keys: model\.1\.conv\.weight.*unexpected keys: model\.1\.anchors, model\.1\.m\.0\.weight") as info:
        load_weights(registry.get_entry("yolov5n"), path, num_classes=80)
    assert "\n" not in str(info.value)


def test_plain_state_dict_still_loads(tmp_path):
    # Our own checkpoints (tensor state dicts) bypass the pickled-module reader.
    torch.manual_seed(0)
    model = y5.yolov5n(num_classes=2)
    path = tmp_path / "mine.pt"
    torch.save(model.state_dict(), path)
    assert y5.read_official_checkpoint(path) is None
    loaded = load_weights(registry.get_entry("yolov5n"), path, num_classes=2)
    assert torch.equal(loaded.model.model[24].m[0].bias, model.model[24].m[0].bias)

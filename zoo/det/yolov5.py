"""YOLOv5 (Jocher et al., ultralytics/yolov5 v6.0/6.1): anchor-based one-stage detector.

Written from the published structure (`models/yolov5s.yaml`, `models/common.py`, `models/yolo.py`
of ultralytics/yolov5 v6.1, read for facts only) and from the official `yolov5n.pt` checkpoint.
The module tree reproduces the official one, so the state-dict keys and shapes are the official
ones (`model.0.conv.weight`, `model.2.m.0.cv1.bn.running_mean`, `model.24.anchors`, ...) and the
release weights load with `strict=True` (`read_official_checkpoint`).

Layout (index = key prefix `model.<i>`; channels before the width multiple; `C3 xN` before the
depth multiple; yolov5s.yaml v6.0):

   0 Conv 6x6 s2 p2 -> 64          P1/2   (v5.0-: Focus + Conv 3x3 on 12 channels, `stem="focus"`)
   1 Conv 3x3 s2 -> 128            P2/4
   2 C3 x3 128
   3 Conv 3x3 s2 -> 256            P3/8
   4 C3 x6 256                              -> kept for the neck
   5 Conv 3x3 s2 -> 512            P4/16
   6 C3 x9 512                              -> kept for the neck
   7 Conv 3x3 s2 -> 1024           P5/32
   8 C3 x3 1024
   9 SPPF k5 1024
  10 Conv 1x1 -> 512                        -> kept
  11 Upsample x2 nearest; 12 Concat [11, 6]; 13 C3 x3 512 (no shortcut)
  14 Conv 1x1 -> 256                        -> kept
  15 Upsample x2 nearest; 16 Concat [15, 4]; 17 C3 x3 256 (no shortcut)     P3 out
  18 Conv 3x3 s2 -> 256; 19 Concat [18, 14]; 20 C3 x3 512 (no shortcut)     P4 out
  21 Conv 3x3 s2 -> 512; 22 Concat [21, 10]; 23 C3 x3 1024 (no shortcut)    P5 out
  24 Detect: one 1x1 conv (with bias) per level -> 3 anchors x (5 + classes)

Scaling (yolo.py `parse_model`): channels `ceil(c * width / 8) * 8`, repeats `max(round(n * depth), 1)`;
n = (depth 0.33, width 0.25), s = (0.33, 0.50).

Input height and width must be multiples of 32 (five stride-2 stages and exact x2 upsampling).
"""
from __future__ import annotations

import math
import warnings
import zipfile
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
import torch.fx
import torch.nn as nn

from zoo.checkpoints import CheckpointError, load_state
from zoo.det.pickle_import import PickledObject, iter_modules, load_pickled_modules, module_tensors, referenced_globals
from zoo.layers import ConvBNAct
from zoo.registry import ModelEntry, OfficialWeights, Published, register

Stem = Literal["conv6x6", "focus"]
Act = Literal["silu", "relu"]

# models/yolov5s.yaml (v6.x) default anchors, (w, h) in input pixels, for P3/8, P4/16, P5/32.
DEFAULT_ANCHORS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)
STRIDES: tuple[int, ...] = (8, 16, 32)

# utils/torch_utils.py `initialize_weights`: every BatchNorm2d gets eps=1e-3, momentum=0.03.
_BN_EPS, _BN_MOMENTUM = 1e-3, 0.03

_ACTS = {
    # inplace like the official modules; SiLU is the default (`Conv.default_act`), ReLU the
    # INT8/DLA-friendly option (DLA has no SiLU; NVIDIA-AI-IOT/yolov5_gpu_optimization).
    "silu": lambda ch: nn.SiLU(inplace=True),
    "relu": lambda ch: nn.ReLU(inplace=True),
}


def _conv(c1: int, c2: int, k: int = 1, s: int = 1, *, act: str) -> ConvBNAct:
    """`models.common.Conv`: Conv2d (no bias, padding k//2 - p=2 for the 6x6 stem) + BN + act.

    `ConvBNAct` names its children `conv`, `bn`, `act` like the official class; its padding
    `(k - 1) // 2` equals the official `k // 2` for odd k and the yaml's explicit p=2 for k=6.
    """
    return ConvBNAct(c1, c2, k, s, bn_eps=_BN_EPS, act=_ACTS[act])


class Bottleneck(nn.Module):
    """`models.common.Bottleneck` as used inside C3 (expansion 1.0): 1x1 -> 3x3, residual if
    `shortcut` and the widths match."""

    def __init__(self, c1: int, c2: int, shortcut: bool, *, act: str) -> None:
        super().__init__()
        self.cv1 = _conv(c1, c2, 1, act=act)
        self.cv2 = _conv(c2, c2, 3, act=act)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """`models.common.C3` (CSP bottleneck with 3 convs): cv3(cat(m(cv1(x)), cv2(x))), hidden c2/2."""

    def __init__(self, c1: int, c2: int, n: int, shortcut: bool = True, *, act: str) -> None:
        super().__init__()
        hidden = c2 // 2
        self.cv1 = _conv(c1, hidden, 1, act=act)
        self.cv2 = _conv(c1, hidden, 1, act=act)
        self.cv3 = _conv(2 * hidden, c2, 1, act=act)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, act=act) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


class SPPF(nn.Module):
    """`models.common.SPPF` (v6.0): three chained 5x5 stride-1 max-pools concatenated with their
    input; equals SPP(5, 9, 13) and is faster (ultralytics/yolov5 #4420)."""

    def __init__(self, c1: int, c2: int, k: int = 5, *, act: str) -> None:
        super().__init__()
        hidden = c1 // 2
        self.cv1 = _conv(c1, hidden, 1, act=act)
        self.cv2 = _conv(hidden * 4, c2, 1, act=act)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), dim=1))


class Focus(nn.Module):
    """`models.common.Focus` (the v5.0-v5.x stem): space-to-depth (4 pixel phases -> 12 channels)
    then Conv 3x3. The v6.0 6x6 s2 conv is the same function class and exports to more backends
    (ultralytics/yolov5 #4825, #6257); its key is `model.0.conv.weight`, Focus's `model.0.conv.conv.weight`."""

    def __init__(self, c1: int, c2: int, *, act: str) -> None:
        super().__init__()
        self.conv = _conv(c1 * 4, c2, 3, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Phase order of the official code: (even row, even col), (odd, even), (even, odd), (odd, odd).
        return self.conv(torch.cat(
            (x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), dim=1))


class Concat(nn.Module):
    """`models.common.Concat`: channel concatenation. A module (not a bare `torch.cat`) only so the
    layer indices, hence the official state-dict keys, line up."""

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(tuple(xs), dim=1)


class BoxDecode(nn.Module):
    """The float tail of `Detect`: raw 1x1-conv outputs -> training maps or decoded boxes.

    Training returns the raw maps (B, na, H, W, 5+nc); eval decodes them (v6.x formulas):
    s = sigmoid(raw), xy = (2 s - 0.5 + grid) * stride, wh = (2 s)^2 * anchor_pixels, then
    objectness and class probabilities, flattened to (B, N, 5+nc). Grids are built from each
    map's shape here (no cached tensors), so a traced ONNX graph is correct for its export shape.

    A module of its own so that FX graph-mode quantization can keep it as one leaf call
    (`fx_leaf`, read by `quant.fx_quant`): its shape arithmetic and per-level loop cannot be traced
    symbolically, and the decode mixes pixel coordinates (0..640) with probabilities (0..1) in one
    tensor, which one 8-bit scale cannot hold, so it runs in float after a dequantize. It checks
    `self.training` when called, not when traced, so a QAT graph traced in training mode still
    decodes in eval mode. It holds no state: `Detect` keeps the `anchors` buffer (official key
    `model.24.anchors`) and passes it in.
    """

    fx_leaf = True

    def __init__(self, na: int, no: int, strides: Sequence[float]) -> None:
        super().__init__()
        self.na, self.no = na, no
        self.strides = tuple(float(s) for s in strides)

    def forward(self, anchors: torch.Tensor, *raw: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        maps = []
        for x in raw:
            b, _, h, w = x.shape
            maps.append(x.view(b, self.na, self.no, h, w).permute(0, 1, 3, 4, 2).contiguous())
        if self.training:
            return maps
        return torch.cat([self._decode(p, anchors[i], self.strides[i]) for i, p in enumerate(maps)], dim=1)

    @staticmethod
    def _decode(p: torch.Tensor, anchors: torch.Tensor, stride: float) -> torch.Tensor:
        b, na, h, w, no = p.shape
        ys = torch.arange(h, device=p.device, dtype=p.dtype)
        xs = torch.arange(w, device=p.device, dtype=p.dtype)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack((gx, gy), dim=-1).view(1, 1, h, w, 2)
        anchor_px = (anchors * stride).to(p.dtype).view(1, na, 1, 1, 2)
        s = p.sigmoid()
        xy = (s[..., 0:2] * 2 - 0.5 + grid) * stride
        wh = (s[..., 2:4] * 2) ** 2 * anchor_px
        return torch.cat((xy, wh, s[..., 4:]), dim=-1).view(b, na * h * w, no)


class Detect(nn.Module):
    """`models.yolo.Detect`: per level a 1x1 conv to `na * (5 + nc)` raw outputs, then `BoxDecode`.

    Buffer `anchors` (nl, na, 2) is in grid units (pixels / stride), as the official `Model`
    stores it after dividing by the stride. Training returns the raw maps (B, na, H, W, 5+nc);
    eval the decoded boxes (B, N, 5+nc) (see `BoxDecode`). The convolutions stay here, outside the
    decode, so FX quantization traces and quantizes them like every other convolution.
    """

    def __init__(self, num_classes: int, in_channels: Sequence[int],
                 anchors: Sequence[Sequence[Sequence[float]]] = DEFAULT_ANCHORS,
                 strides: Sequence[int] = STRIDES) -> None:
        super().__init__()
        self.nc = num_classes
        self.no = num_classes + 5
        self.nl = len(anchors)
        self.na = len(anchors[0])
        self.strides = tuple(float(s) for s in strides)
        self.m = nn.ModuleList(nn.Conv2d(c, self.na * self.no, 1) for c in in_channels)
        grid_units = torch.tensor(anchors, dtype=torch.float32) / torch.tensor(self.strides).view(-1, 1, 1)
        self.register_buffer("anchors", grid_units)
        self.decode = BoxDecode(self.na, self.no, self.strides)

    @torch.no_grad()
    def init_biases(self, image_size: int = 640) -> None:
        """The official prior (`Model._initialize_biases`, after RetinaNet's, arXiv:1708.02002 s3.3):
        objectness as if 8 objects per 640x640 image, class probability 0.6 / (nc - 0.99)."""
        for conv, stride in zip(self.m, self.strides):
            b = conv.bias.view(self.na, self.no)
            b[:, 4] += math.log(8 / (image_size / stride) ** 2)
            b[:, 5:] += math.log(0.6 / (self.nc - 0.99))

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor] | torch.Tensor:
        return self.decode(self.anchors, *(conv(x) for conv, x in zip(self.m, feats)))


def _width(c: int, multiple: float) -> int:
    # yolo.py parse_model: make_divisible(c * gw, 8)
    return int(math.ceil(c * multiple / 8) * 8)


def _depth(n: int, multiple: float) -> int:
    return max(round(n * multiple), 1)


class YOLOv5(nn.Module):
    """YOLOv5 v6.x network. `self.model` is the 25-entry module list the official keys index."""

    def __init__(self, *, num_classes: int = 80, depth: float, width: float,
                 stem: Stem = "conv6x6", act: Act = "silu") -> None:
        super().__init__()
        if stem not in ("conv6x6", "focus"):
            raise ValueError(f"stem must be 'conv6x6' or 'focus', got {stem!r}")
        if act not in _ACTS:
            raise ValueError(f"act must be one of {sorted(_ACTS)}, got {act!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.stem, self.act = num_classes, stem, act
        self.strides = STRIDES
        c = {k: _width(k, width) for k in (64, 128, 256, 512, 1024)}
        n3, n6, n9 = _depth(3, depth), _depth(6, depth), _depth(9, depth)
        a = {"act": act}
        stem_layer = Focus(3, c[64], **a) if stem == "focus" else _conv(3, c[64], 6, 2, **a)
        layers: list[nn.Module] = [
            stem_layer,                                                    # 0  P1/2
            _conv(c[64], c[128], 3, 2, **a), C3(c[128], c[128], n3, **a),  # 1, 2  P2/4
            _conv(c[128], c[256], 3, 2, **a), C3(c[256], c[256], n6, **a),  # 3, 4  P3/8
            _conv(c[256], c[512], 3, 2, **a), C3(c[512], c[512], n9, **a),  # 5, 6  P4/16
            _conv(c[512], c[1024], 3, 2, **a), C3(c[1024], c[1024], n3, **a),  # 7, 8  P5/32
            SPPF(c[1024], c[1024], 5, **a),                                # 9
            _conv(c[1024], c[512], 1, **a),                                # 10
            nn.Upsample(scale_factor=2, mode="nearest"), Concat(),         # 11, 12
            C3(2 * c[512], c[512], n3, False, **a),                        # 13
            _conv(c[512], c[256], 1, **a),                                 # 14
            nn.Upsample(scale_factor=2, mode="nearest"), Concat(),         # 15, 16
            C3(2 * c[256], c[256], n3, False, **a),                        # 17  P3 out
            _conv(c[256], c[256], 3, 2, **a), Concat(),                    # 18, 19
            C3(2 * c[256], c[512], n3, False, **a),                        # 20  P4 out
            _conv(c[512], c[512], 3, 2, **a), Concat(),                    # 21, 22
            C3(2 * c[512], c[1024], n3, False, **a),                       # 23  P5 out
            Detect(num_classes, (c[256], c[512], c[1024])),                # 24
        ]
        self.model = nn.ModuleList(layers)
        self._init_weights()

    def _init_weights(self) -> None:
        # Convolutions keep PyTorch's default init, as in the official `initialize_weights`.
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = _BN_EPS, _BN_MOMENTUM
        self.detect.init_biases()

    @property
    def detect(self) -> Detect:
        return self.model[24]  # type: ignore[return-value]

    @property
    def build_kwargs(self) -> dict[str, str]:
        """The builder options beyond the class count (recorded with quantized artifacts)."""
        return {"stem": self.stem, "act": self.act}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        x = _check_input_size(x)
        m = self.model
        for i in range(4):
            x = m[i](x)
        p3 = m[4](x)
        p4 = m[6](m[5](p3))
        x = m[9](m[8](m[7](p4)))
        h10 = m[10](x)
        h14 = m[14](m[13](m[12]([m[11](h10), p4])))
        out3 = m[17](m[16]([m[15](h14), p3]))
        out4 = m[20](m[19]([m[18](out3), h14]))
        out5 = m[23](m[22]([m[21](out4), h10]))
        return m[24]([out3, out4, out5])


def _check_input_size(x: torch.Tensor) -> torch.Tensor:
    """`x`, after checking its height and width. An FX leaf (`torch.fx.wrap` below): sizes are not
    known while FX traces symbolically; returning `x` keeps the check in the traced graph's data flow."""
    with warnings.catch_warnings():
        # While tracing (ONNX export) sizes are 0-dim tensors and the tracer warns that the check
        # becomes a constant of the trace; for a static-shape export that is exactly what we want.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        h, w = (int(v) for v in x.shape[-2:])
    if h % 32 or w % 32:
        raise ValueError(f"YOLOv5 input height and width must be multiples of 32, got {h}x{w}")
    return x


torch.fx.wrap("_check_input_size")


def yolov5n(*, num_classes: int = 80, stem: Stem = "conv6x6", act: Act = "silu") -> YOLOv5:
    return YOLOv5(num_classes=num_classes, depth=0.33, width=0.25, stem=stem, act=act)


def yolov5s(*, num_classes: int = 80, stem: Stem = "conv6x6", act: Act = "silu") -> YOLOv5:
    return YOLOv5(num_classes=num_classes, depth=0.33, width=0.50, stem=stem, act=act)


# ---------------------------------------------------------------------------------------------
# Official checkpoint import (ultralytics `.pt`: a pickled `models.yolo.Model`, usually FP16)
# ---------------------------------------------------------------------------------------------

# Every global a YOLOv5 v5.0-v7.0 detection checkpoint may reference beyond torch's tensor
# allow-list; each becomes an inert stand-in. Anything else (os.system, an unknown class) is refused.
OFFICIAL_GLOBALS: frozenset[str] = frozenset({
    "models.yolo.Model", "models.yolo.DetectionModel", "models.yolo.Detect",
    "models.common.Conv", "models.common.C3", "models.common.Bottleneck", "models.common.SPPF",
    "models.common.SPP", "models.common.Focus", "models.common.Concat",
    "torch.nn.modules.conv.Conv2d", "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.SiLU", "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.pooling.MaxPool2d", "torch.nn.modules.upsampling.Upsample",
    "torch.nn.modules.container.Sequential", "torch.nn.modules.container.ModuleList",
})

_ACT_CLASSES = {"torch.nn.modules.activation.SiLU": "silu", "torch.nn.modules.activation.ReLU": "relu"}
_WIDTH_TO_MODEL = {0.25: "yolov5n", 0.5: "yolov5s"}
# Official pre-processing (utils/dataloaders.py, val.py): RGB, pixels / 255, no mean or std.
OFFICIAL_PREPROCESS = {"bgr": False, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "scale": 1 / 255}


def read_official_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """Read an ultralytics YOLOv5 checkpoint as `{"model": float32 state dict, "meta": {...}}`.

    The `checkpoint_reader` hook of the YOLOv5 entries: returns None for a file that is a plain
    tensor state dict (or not a torch zip at all), which `zoo.checkpoints.read_checkpoint` then
    reads as usual. Raises `CheckpointError` for a pickled-module file it refuses.

    `meta` carries `num_classes`, `classes` (names), `anchors` (pixels), `stride`, `model` (when
    the width multiple identifies n or s), the builder options the weights imply (`build_kwargs`:
    stem and activation, which the keys alone cannot show for the activation) and `preprocess`.
    """
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path) or not referenced_globals(path):
        return None
    obj = load_pickled_modules(path, OFFICIAL_GLOBALS)
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not an ultralytics checkpoint dict")
    # Training checkpoints carry both; releases (strip_optimizer) keep the EMA weights in "model".
    net = obj.get("ema") or obj.get("model")
    if not isinstance(net, PickledObject):
        raise CheckpointError(f"checkpoint {path} has no pickled model under 'model' or 'ema'")
    state = module_tensors(net)
    detect = _find_detect(net, path)
    attrs = net.__dict__
    num_classes = detect.__dict__.get("nc") or attrs.get("nc") or (attrs.get("yaml") or {}).get("nc")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise CheckpointError(f"checkpoint {path} records no class count (Detect.nc)")
    stride = _as_floats(detect.__dict__.get("stride", attrs.get("stride")))
    if stride is not None and tuple(stride) != tuple(float(s) for s in STRIDES):
        raise CheckpointError(f"checkpoint {path} has strides {stride}; this YOLOv5 supports {STRIDES} only")
    anchors = state.get("model.24.anchors")
    anchors_px = (anchors * torch.tensor(STRIDES, dtype=anchors.dtype).view(-1, 1, 1)).tolist() if anchors is not None else None
    meta: dict[str, Any] = {
        "num_classes": num_classes,
        "anchors": anchors_px, "stride": stride,
        "build_kwargs": {"stem": _stem_of(net), "act": _act_of(net, path)},
        "preprocess": dict(OFFICIAL_PREPROCESS),
        "source": f"ultralytics/yolov5 checkpoint {path.name}",
    }
    names = attrs.get("names")
    if isinstance(names, dict):  # v7.0 stores {index: name}
        names = [names[k] for k in sorted(names)]
    if isinstance(names, list) and len(names) == num_classes:
        meta["classes"] = [str(n) for n in names]
    width = (attrs.get("yaml") or {}).get("width_multiple")
    if width in _WIDTH_TO_MODEL:
        meta["model"] = _WIDTH_TO_MODEL[width]
    if isinstance(obj.get("date"), str):
        meta["date"] = obj["date"]
    return {"model": state, "meta": meta}


def load_official(path: str | Path) -> YOLOv5:
    """Build the YOLOv5 size an ultralytics checkpoint was trained as (n or s) and load it strictly
    (eval mode). `zoo.checkpoints.load_weights` does the same through the registry."""
    ckpt = read_official_checkpoint(path)
    if ckpt is None:
        raise CheckpointError(f"{path} is not a pickled ultralytics YOLOv5 checkpoint")
    meta = ckpt["meta"]
    builders = {"yolov5n": yolov5n, "yolov5s": yolov5s}
    if meta.get("model") not in builders:
        raise CheckpointError(f"checkpoint {path} is not YOLOv5n or YOLOv5s (width multiple not 0.25 / 0.5)")
    model = builders[meta["model"]](num_classes=meta["num_classes"], **meta["build_kwargs"])
    load_state(model, ckpt["model"], source=str(path))
    return model.eval()


def _find_detect(net: PickledObject, path: Path) -> PickledObject:
    for _, m in iter_modules(net):
        if m.pickled_name == "models.yolo.Detect":
            return m
    raise CheckpointError(f"checkpoint {path} has no models.yolo.Detect head")


def _act_of(net: PickledObject, path: Path) -> str:
    found = {m.pickled_name for name, m in iter_modules(net) if name.endswith(".act")}
    acts = {_ACT_CLASSES.get(n, n) for n in found}
    if len(acts) != 1 or not acts <= set(_ACTS):
        raise CheckpointError(f"checkpoint {path} uses activations {sorted(found)}; supported: one of SiLU, ReLU")
    return acts.pop()


def _stem_of(net: PickledObject) -> str:
    first = dict(iter_modules(net)).get("model.0")
    return "focus" if first is not None and first.pickled_name == "models.common.Focus" else "conv6x6"


def _as_floats(value: Any) -> list[float] | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return [float(v) for v in value.float().flatten()]
    return [float(v) for v in value]


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

_CITATION = ("Jocher, G. et al., \"ultralytics/yolov5: v6.0 - YOLOv5n 'Nano' models, Roboflow integration, "
             "TensorFlow export, OpenCV DNN support\" (2021) and v6.1 (2022), Zenodo, "
             "doi:10.5281/zenodo.5563715; https://github.com/ultralytics/yolov5")
# The README's "FLOPs" are 2x MACs (utils/torch_utils.py `* 2`; MODELS.md), hence 4.5 -> 2.25, 16.5 -> 8.25.
_SOURCE = "ultralytics/yolov5 v6.1/v7.0 README table (params, mAP; GFLOPs 4.5 / 16.5 @640 halved to MACs)"

register(ModelEntry(
    name="yolov5n",
    task="detection",
    family="yolov5",
    builder=yolov5n,
    citation=_CITATION,
    published=Published(
        params_m=1.87, num_classes=80, gmacs=2.25, gmacs_hw=(640, 640),
        map50_95=28.0, map_note="COCO val2017 at 640 (mAP50 45.7)",
        # The README's "1.9 M" is rounded; 1,872,157 is counted from the official yolov5n.pt.
        source=_SOURCE + "; params 1.87 M counted in the official yolov5n.pt (README: 1.9 M)",
    ),
    aliases=("yolov5",),
    official_weights=(
        OfficialWeights(
            description="YOLOv5n v6.1 COCO release (ultralytics/yolov5, pickled FP16 model)",
            num_classes=80,
            filename="yolov5n.pt",
            preprocess=OFFICIAL_PREPROCESS,
        ),
    ),
    checkpoint_reader=read_official_checkpoint,
))

register(ModelEntry(
    name="yolov5s",
    task="detection",
    family="yolov5",
    builder=yolov5s,
    citation=_CITATION,
    published=Published(
        params_m=7.2, num_classes=80, gmacs=8.25, gmacs_hw=(640, 640),
        map50_95=37.4, map_note="COCO val2017 at 640 (mAP50 56.8)",
        source=_SOURCE,
    ),
    checkpoint_reader=read_official_checkpoint,
))

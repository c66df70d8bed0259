"""Model plugins: one interface between decoded frames and a network, found by name.

A plugin turns an RGB frame into a drawn result in four steps, each timed by the pipeline:

    inputs  = plugin.preprocess(frame)             # HxWx3 uint8 RGB (read-only view) -> model input
    outputs = plugin.infer(inputs)                 # the runtime call
    result  = plugin.postprocess(outputs, inputs, frame)   # masks, boxes ...
    image   = plugin.draw(frame, result)           # a new HxWx3 uint8 RGB image (only when a sink shows it)

plus `load(log)` (once, before the first frame; may be slow: export, quantize, build engines)
and `describe()` (what ran: goes into the video record). Model code stays out of GStreamer
elements: the pipeline only hands frames over (the design note's proposal in
../shared/docs/LOSSES_INSTANCES_VIDEO.md section 3).

Discovery: the built-in `zoo` plugin, plus every entry point in the group
`edgezoo.video_plugins` of installed distributions. An entry point names a class or factory
called with a `PluginConfig`:

    # a third-party pyproject.toml
    [project.entry-points."edgezoo.video_plugins"]
    lanes = "my_pkg.lanes:LanePlugin"

    python -m video.run --plugin lanes --source clip.mp4 --sink file

The `zoo` plugin runs any zoo network and variant on any bench backend: artifacts come from
`bench.runner.prepare_model(...).variant_artifact(...)` (the same FP32 weights, ONNX exports and
quantized models the benchmarks use, cached in the artifact folder), inference from
`bench.backends`. Pixels in: `bench.imageops`' resize and coefficients, applied by
`normalize_into` (bit-exact with the zoo's evaluation, tested; ~0.2 ms per 360x480 frame instead
of ~3 ms). Masks out: `upsample_argmax`, the same bilinear-then-argmax as
`bench.imageops.postprocess` computed channel by channel with OpenCV (~1-2 ms instead of 15 ms or
more; the tests check that the masks agree). Segmentation networks draw the dataset card's class
palette over the frame; detection networks (YOLOv5, when `zoo/det/postprocess.py` exists) are
letterboxed and draw boxes after NMS (the deployment thresholds, conf 0.25 / IoU 0.45).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from video.errors import VideoError

ENTRY_POINT_GROUP = "edgezoo.video_plugins"
REQUIRED_METHODS = ("load", "preprocess", "infer", "postprocess", "draw", "describe")


@dataclass
class PluginConfig:
    """What a plugin is asked to run. Third-party plugins may ignore fields or read `options`."""

    model: str = "ddrnet"
    variant: str = "fp32"
    backend: str = "onnxruntime"
    weights: str | None = None          # checkpoint path, "random", or None (cached / quick-trained)
    data: str | None = None             # dataset card (classes, palette, preprocessing); default by task
    data_root: str | None = None
    input_hw: tuple[int, int] | None = None   # network input; default: the card's
    threads: int = 2
    artifacts: str | None = None
    calib_images: int = 256             # static PTQ calibration (as bench.run)
    calib_method: str | None = None    # None: the task's default for the backend (bench.runner.calib_method_of)
    seed: int = 0                       # seed of --weights random
    alpha: float = 0.5                  # overlay opacity
    conf_thres: float = 0.25            # detection
    iou_thres: float = 0.45
    progress: bool = True
    options: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class ModelPlugin(Protocol):
    name: str

    def load(self, log: Callable[[str], None]) -> None: ...

    def preprocess(self, frame: np.ndarray) -> Any: ...

    def infer(self, inputs: Any) -> Any: ...

    def postprocess(self, outputs: Any, inputs: Any, frame: np.ndarray) -> Any: ...

    def draw(self, frame: np.ndarray, result: Any) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


# ------------------------------------------------------------------------------------------------
# drawing (numpy only)


def nearest_indices(n_out: int, n_in: int) -> np.ndarray:
    """Source index of each output pixel for a nearest-neighbour resize (pixel centres)."""
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def overlay_mask(frame: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the palette colour of each class over `frame` (HxWx3 uint8); `mask` (h x w class
    ids) is resized to the frame with nearest neighbour; ids beyond the palette take its last
    colour. Returns a new array."""
    H, W = frame.shape[:2]
    if mask.shape != (H, W):
        mask = mask[nearest_indices(H, mask.shape[0])[:, None], nearest_indices(W, mask.shape[1])[None, :]]
    colours = palette[np.minimum(mask, len(palette) - 1)]
    a = int(round(np.clip(alpha, 0.0, 1.0) * 256))
    out = (frame.astype(np.uint16) * (256 - a) + colours.astype(np.uint16) * a) >> 8
    return out.astype(np.uint8)


def draw_boxes(frame: np.ndarray, boxes: np.ndarray, palette: np.ndarray, thickness: int = 2) -> np.ndarray:
    """Rectangles for (K, 6) [x0, y0, x1, y1, score, class] boxes in frame pixels; a new array."""
    out = np.array(frame, dtype=np.uint8, copy=True)
    H, W = out.shape[:2]
    for x0, y0, x1, y1, _score, cls in np.asarray(boxes, dtype=np.float64).reshape(-1, 6):
        c = palette[int(cls) % len(palette)]
        x0, x1 = int(np.clip(round(x0), 0, W - 1)), int(np.clip(round(x1), 0, W - 1))
        y0, y1 = int(np.clip(round(y0), 0, H - 1)), int(np.clip(round(y1), 0, H - 1))
        t = thickness
        out[y0:min(y0 + t, y1 + 1), x0:x1 + 1] = c
        out[max(y1 - t + 1, y0):y1 + 1, x0:x1 + 1] = c
        out[y0:y1 + 1, x0:min(x0 + t, x1 + 1)] = c
        out[y0:y1 + 1, max(x1 - t + 1, x0):x1 + 1] = c
    return out


def normalize_into(image: np.ndarray, a: np.ndarray, b: np.ndarray, bgr: bool, out: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> `out` (1, 3, H, W) float32 = pixel * a + b per channel (channels
    reversed when `bgr`): the arithmetic of `bench.imageops.Preprocessor.normalize` (same float32
    multiply, then add: bit-identical, tested), one channel at a time straight from the uint8
    view into a reused buffer (~0.2 ms at 360x480 instead of ~3 ms for stack/astype/transpose)."""
    planes = image.transpose(2, 0, 1)
    for c in range(3):
        src = 2 - c if bgr else c
        np.multiply(planes[src], a[src], out=out[0, c], dtype=np.float32)
        out[0, c] += b[src]
    return out


def upsample_argmax(logits: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(1, C, h, w) logits -> (H, W) uint8 class mask at `hw`: bilinear upsampling (half-pixel
    centres) then argmax, like `bench.imageops.postprocess`, but one channel at a time with
    OpenCV's resize and a running maximum, never materialising the argmax over a C-wide last
    axis. At 360x480 with 11 classes this takes ~2 ms instead of ~15-90 ms for the dense
    interpolation matrices + `argmax(axis=1)`; ties go to the lower class as with `argmax`.
    Falls back to `bench.imageops.postprocess` without OpenCV or for more than 255 classes."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - opencv-python-headless is a core dependency
        cv2 = None
    x = np.asarray(logits, dtype=np.float32)
    if cv2 is None or x.ndim != 4 or x.shape[0] != 1 or x.shape[1] > 255:
        from bench.imageops import postprocess

        return postprocess(x, hw)[0]
    H, W = int(hw[0]), int(hw[1])
    same = x.shape[-2:] == (H, W)
    best = np.array(x[0, 0], copy=True) if same else cv2.resize(x[0, 0], (W, H), interpolation=cv2.INTER_LINEAR)
    cur = np.empty((H, W), np.float32)
    arg = np.zeros((H, W), np.uint8)
    gt = np.empty((H, W), bool)
    for c in range(1, x.shape[1]):
        if same:
            cur[...] = x[0, c]
        else:
            cv2.resize(x[0, c], (W, H), dst=cur, interpolation=cv2.INTER_LINEAR)
        np.greater(cur, best, out=gt)
        np.maximum(best, cur, out=best)
        np.copyto(arg, c, where=gt)
    return arg


def detection_supported() -> bool:
    """Detection networks are drawn only when the zoo has its detector post-processing."""
    return importlib.util.find_spec("zoo.det.postprocess") is not None


# ------------------------------------------------------------------------------------------------
# the built-in plugin


class ZooPlugin:
    """Any zoo network x variant x bench backend (see the module docstring)."""

    name = "zoo"

    def __init__(self, config: PluginConfig):
        self.config = config
        self.info: dict[str, Any] = {}

    def load(self, log: Callable[[str], None]) -> None:
        from bench.backends import BackendUnavailable, device_of, get_backend, precision_of
        from bench.imageops import Preprocessor
        from bench.runner import IMPLEMENTED_VARIANTS, BenchConfig, prepare_model, quant_config, variant_support
        from zoo.checkpoints import artifacts_dir
        from zoo.data import load_card
        from zoo.registry import get_entry

        cfg = self.config
        entry = get_entry(cfg.model)
        data = cfg.data or ("synthetic" if entry.task == "segmentation" else "coco")
        card = load_card(data)
        if card.task != entry.task:
            raise VideoError(f"--model {entry.name} is a {entry.task} network but --data {data} is a "
                             f"{card.task} dataset card; pick a {entry.task} card")
        if entry.task == "detection" and not detection_supported():
            raise VideoError(f"--model {entry.name}: detection needs zoo/det/postprocess.py, absent here")
        if cfg.variant not in IMPLEMENTED_VARIANTS:
            raise VideoError(f"--quant {cfg.variant}: use one of {', '.join(IMPLEMENTED_VARIANTS)}")
        try:
            bcls = get_backend(cfg.backend)
        except KeyError as exc:
            raise VideoError(str(exc.args[0])) from None
        ok, why = bcls.available()
        if not ok:
            raise VideoError(f"--backend {cfg.backend} cannot run here: {why}")
        hw = tuple(int(v) for v in (cfg.input_hw or card.input_size))
        bcfg = BenchConfig(models=[entry.name], variants=[cfg.variant], backends=[cfg.backend], data=data,
                           data_root=cfg.data_root, weights=cfg.weights, input_hw=hw, threads=cfg.threads,
                           artifacts=cfg.artifacts, calib_images=cfg.calib_images, calib_method=cfg.calib_method,
                           seed=cfg.seed, progress=cfg.progress)
        ok, why = variant_support(cfg.variant, bcls, bcfg)
        if not ok:
            raise VideoError(f"--quant {cfg.variant} on --backend {cfg.backend}: {why}")
        prep = prepare_model(bcfg, entry.name)
        artifact = prep.variant_artifact(bcfg, bcls.artifact_kind, cfg.variant, cfg.backend, hw, 1, log)
        options = {"cache_dir": str(artifacts_dir(cfg.artifacts) / "trt"), "dla_core": None,
                   "trt_precision": "fp16", "workspace_mb": 1024,
                   "variant": cfg.variant, "int8": cfg.variant != "fp32"}
        backend = bcls()
        try:
            if hasattr(backend, "prepare"):  # TensorRT: build (or reuse) the engine
                backend.prepare(artifact, options=options)
            t0 = time.perf_counter()
            backend.load(artifact, threads=cfg.threads, options=options)
            load_s = time.perf_counter() - t0
        except BackendUnavailable as exc:
            raise VideoError(f"--backend {cfg.backend} cannot run here: {exc}") from None
        self.backend = backend
        self.task = entry.task
        self.hw = hw
        self.pre = Preprocessor(prep.preprocess, hw)
        self._input = np.empty((1, 3, *hw), dtype=np.float32)
        self.palette = np.asarray(card.palette, dtype=np.uint8)
        self.info = {
            "plugin": self.name, "model": entry.name, "task": entry.task, "variant": cfg.variant,
            "backend": cfg.backend, "precision": precision_of(bcls, cfg.variant, options),
            "device": device_of(bcls, options), "dataset": data, "input_hw": list(hw), "threads": cfg.threads,
            "weights_sha256": prep.weights_sha256, "quant_config": quant_config(bcfg, cfg.variant, cfg.backend),
            "weights": {"path": prep.weights_path, "sha256": prep.weights_sha256, **prep.weights_meta},
            "artifact": {k: artifact[k] for k in ("kind", "path", "sha256", "bytes", "size_mb", "quant",
                                                  "dynamic_quant", "fx_int8") if k in artifact},
            "params": prep.params, "preprocess": prep.preprocess, "load_s": load_s,
            "runtime": backend.info() if hasattr(backend, "info") else {},
        }
        if entry.task == "detection":
            from zoo.det.postprocess import NMSConfig

            self.nms = NMSConfig(conf_thres=cfg.conf_thres, iou_thres=cfg.iou_thres)
            self.info["nms"] = self.nms.as_dict()
        log(f"plugin zoo: {entry.name} {cfg.variant} on {cfg.backend} ({self.info['precision']}, "
            f"{self.info['device']}), input {hw[0]}x{hw[1]}, artifact {artifact['path']}")

    def preprocess(self, frame: np.ndarray) -> Any:
        # The network input buffer is reused frame after frame: `infer` consumes it synchronously.
        if self.task == "detection":
            from zoo.data.letterbox import letterbox

            boxed, info = letterbox(np.ascontiguousarray(frame), self.hw)
            return normalize_into(boxed, self.pre.a, self.pre.b, self.pre.bgr, self._input), info
        from bench.imageops import resize_image

        image = resize_image(frame, self.hw)   # bilinear, as the benchmark; a no-op at the input size
        return normalize_into(image, self.pre.a, self.pre.b, self.pre.bgr, self._input), None

    def infer(self, inputs: Any) -> Any:
        return self.backend.infer(inputs[0])

    def postprocess(self, outputs: Any, inputs: Any, frame: np.ndarray) -> Any:
        if self.task == "detection":
            import torch

            from zoo.det.postprocess import non_max_suppression, scale_boxes

            det = non_max_suppression(torch.from_numpy(np.asarray(outputs)), self.nms.conf_thres,
                                      self.nms.iou_thres, self.nms.max_det)[0]
            det = det.numpy()
            if len(det):
                det[:, :4] = scale_boxes(det[:, :4], inputs[1])
            return det
        return upsample_argmax(outputs, self.hw)

    def draw(self, frame: np.ndarray, result: Any) -> np.ndarray:
        if self.task == "detection":
            return draw_boxes(frame, result, self.palette)
        return overlay_mask(frame, result, self.palette, self.config.alpha)

    def describe(self) -> dict[str, Any]:
        return dict(self.info)


BUILTIN: dict[str, Callable[[PluginConfig], Any]] = {"zoo": ZooPlugin}


# ------------------------------------------------------------------------------------------------
# discovery


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def discover() -> dict[str, Any]:
    """Plugin name -> factory (built-in) or EntryPoint (installed). Two plugins claiming one
    name are an error naming both (registries fail loudly)."""
    found: dict[str, Any] = dict(BUILTIN)
    origin = {name: f"built-in {f.__module__}:{f.__qualname__}" for name, f in BUILTIN.items()}
    for ep in _entry_points():
        if ep.name in found:
            if origin[ep.name].endswith(ep.value):  # the built-in, also installed as an entry point
                continue
            raise VideoError(f"two video plugins are named {ep.name!r}: {origin[ep.name]} and entry point "
                             f"{ep.value}; uninstall one")
        found[ep.name] = ep
        origin[ep.name] = f"entry point {ep.value}"
    return found


def load_plugin(name: str, config: PluginConfig) -> Any:
    """Instantiate plugin `name` with `config`; unknown names list the installed ones."""
    found = discover()
    if name not in found:
        raise VideoError(f"unknown video plugin {name!r}; installed: {', '.join(sorted(found))} "
                         f"(third-party plugins register the entry-point group {ENTRY_POINT_GROUP})")
    factory = found[name]
    if isinstance(factory, importlib.metadata.EntryPoint):
        try:
            factory = factory.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin is the user's one-line error
            raise VideoError(f"video plugin {name!r} ({found[name].value}) failed to import: "
                             f"{type(exc).__name__}: {exc}") from None
    plugin = factory(config)
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(plugin, m, None))]
    if missing:
        raise VideoError(f"video plugin {name!r} lacks {', '.join(missing)} (see video.plugins.ModelPlugin)")
    return plugin


def config_dict(config: PluginConfig) -> dict[str, Any]:
    d = asdict(config)
    d["input_hw"] = list(config.input_hw) if config.input_hw else None
    return d

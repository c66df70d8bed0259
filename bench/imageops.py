"""Pixels in and masks (or letterboxed detector inputs) out, with numpy, Pillow and OpenCV only
(no torch: the ONNX Runtime and TensorRT cell processes must not pay ~600 MB of RSS for
importing it).

`preprocess_batch` reproduces `zoo.data.Preprocess.batch_numpy` bit for bit from the dict that
`Preprocess.to_dict()` stores next to the weights (tests/test_bench_units.py checks it), and
`resize_image`/`resize_label` do what the zoo's evaluation does (bilinear image, nearest label).

Detection: `letterbox` reproduces `zoo.data.letterbox.eval_letterbox(..., rect=False)` bit for bit
for square sizes (tests/test_bench_det.py checks it) and generalises it to any fixed H x W; it
cannot simply be imported from there because importing `zoo.data` imports torch.
`unletterbox_boxes` is the exact inverse that `zoo.det.postprocess.scale_boxes` applies.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
from PIL import Image

try:  # the resize the reference detector numbers were made with (zoo/data/letterbox.py)
    import cv2
except ImportError:  # pragma: no cover - depends on the environment
    cv2 = None

PAD_VALUE = 114  # YOLOv5's letterbox grey (zoo.data.letterbox.PAD_VALUE)
RESIZE_BACKEND = "opencv" if cv2 is not None else "pillow"


def read_rgb(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 -> the network's input size (bilinear); unchanged when already that size."""
    h, w = hw
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def resize_label(label: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    if label.shape[:2] == (h, w):
        return label
    return np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))


def _number(value: Any) -> float:
    return float(Fraction(value)) if isinstance(value, str) else float(value)


def affine(pre: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (a, b) in RGB input order such that input = pixel * a + b."""
    mean = np.asarray(pre["mean"], dtype=np.float64)
    std = np.asarray(pre["std"], dtype=np.float64)
    a = _number(pre.get("scale", 1.0)) / std
    b = -mean * a
    if pre.get("bgr", False):  # coefficients are given for B,G,R; they apply after reordering
        a, b = a[::-1], b[::-1]
    return a.astype(np.float32), b.astype(np.float32)


class Preprocessor:
    """uint8 RGB images (any size) -> float32 NCHW network input at `hw`."""

    def __init__(self, pre: dict[str, Any], hw: tuple[int, int]):
        self.a, self.b = affine(pre)
        self.bgr = bool(pre.get("bgr", False))
        self.hw = (int(hw[0]), int(hw[1]))

    def normalize(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Same-size HxWx3 images -> NCHW float32 (the math of Preprocess.batch_numpy)."""
        stacked = np.stack([np.asarray(im) for im in images])
        x = stacked.astype(np.float32) * self.a + self.b
        if self.bgr:
            x = x[..., ::-1]
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.normalize([resize_image(im, self.hw) for im in images])


def preprocess_batch(images: Sequence[np.ndarray], pre: dict[str, Any]) -> np.ndarray:
    """Functional form of `Preprocessor.normalize` for same-size images."""
    a, b = affine(pre)
    x = np.stack([np.asarray(im) for im in images]).astype(np.float32) * a + b
    if pre.get("bgr", False):
        x = x[..., ::-1]
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@lru_cache(maxsize=16)
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear interpolation weights (n_out, n_in) with half-pixel centres, the convention of
    torch's F.interpolate(mode="bilinear", align_corners=False) that the networks use."""
    scale = n_in / n_out
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.clip(src, 0.0, None)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    m = np.zeros((n_out, n_in), dtype=np.float32)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), (1.0 - frac).astype(np.float32))
    np.add.at(m, (rows, i1), frac.astype(np.float32))
    return m


def upsample_bilinear(logits: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """NCHW logits -> NCHW at `hw` (separable bilinear, half-pixel centres)."""
    h, w = hw
    if logits.shape[-2:] == (h, w):
        return logits
    ry = _interp_matrix(h, logits.shape[-2])
    rx = _interp_matrix(w, logits.shape[-1])
    return ry @ (np.asarray(logits, dtype=np.float32) @ rx.T)


def postprocess(logits: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """NCHW logits -> N x H x W class masks at the input size (upsample if needed, argmax)."""
    logits = upsample_bilinear(np.asarray(logits), hw)
    mask = logits.argmax(axis=1)
    return mask.astype(np.uint8 if logits.shape[1] <= 256 else np.uint16)


# ---------------------------------------------------------------------------------------------
# detection: letterbox to the cell's fixed input size, and boxes back to the original pixels


@dataclass(frozen=True)
class LetterboxInfo:
    """What `letterbox` did to one image: (h0, w0), gain (gy, gx), offset (top, left)."""

    orig_shape: tuple[int, int]
    gain: tuple[float, float]
    offset: tuple[int, int]


def _resize_keep(image: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """`zoo.data.letterbox.resize`: area averaging when shrinking, bilinear when enlarging."""
    h, w = image.shape[:2]
    nw, nh = int(size_wh[0]), int(size_wh[1])
    if (nw, nh) == (w, h):
        return image
    shrink = nw * nh < w * h
    if cv2 is not None:
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        return cv2.resize(np.ascontiguousarray(image), (nw, nh), interpolation=interp)
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize((nw, nh), resample=resample))


def letterbox(image: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, LetterboxInfo]:
    """HxWx3 uint8 -> the fixed network input `hw`, aspect ratio kept, centred on grey 114.

    As YOLOv5 val.py / `zoo.data.letterbox.eval_letterbox(rect=False)`: scale r = min(H / h0,
    W / w0) (for a square, "long side to the size"), new size ceil(w0 r) x ceil(h0 r), then
    placed with the odd pixel of padding at the bottom / right. One fixed shape per cell because
    ONNX exports and TensorRT engines are built for one input shape.
    """
    h0, w0 = image.shape[:2]
    H, W = int(hw[0]), int(hw[1])
    r = min(H / h0, W / w0)
    if r != 1:
        resized = _resize_keep(image, (min(W, math.ceil(w0 * r)), min(H, math.ceil(h0 * r))))
    else:
        resized = image
    h1, w1 = resized.shape[:2]
    top, left = (H - h1) // 2, (W - w1) // 2
    out = np.full((H, W, image.shape[2]), PAD_VALUE, dtype=image.dtype)
    out[top:top + h1, left:left + w1] = resized
    return out, LetterboxInfo(orig_shape=(h0, w0), gain=(h1 / h0, w1 / w0), offset=(top, left))


def unletterbox_boxes(boxes: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """Network-input xyxy boxes -> original-image pixels, clipped to the image (a new array):
    the exact inverse of `letterbox`, as `zoo.det.postprocess.scale_boxes` does it."""
    b = np.array(boxes, dtype=np.float32, copy=True)
    (gy, gx), (top, left) = info.gain, info.offset
    h0, w0 = info.orig_shape
    b[..., [0, 2]] = ((b[..., [0, 2]] - left) / gx).clip(0, w0)
    b[..., [1, 3]] = ((b[..., [1, 3]] - top) / gy).clip(0, h0)
    return b


class DetPreprocessor:
    """uint8 RGB images (any sizes) -> (float32 NCHW letterboxed batch at `hw`, per-image info)."""

    def __init__(self, pre: dict[str, Any], hw: tuple[int, int]):
        self.norm = Preprocessor(pre, hw)
        self.hw = self.norm.hw

    def __call__(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[LetterboxInfo]]:
        boxed, infos = zip(*(letterbox(im, self.hw) for im in images))
        return self.norm.normalize(boxed), list(infos)

"""Letterbox resizing for detectors: keep the aspect ratio, pad with grey to a stride multiple.

Two ways to pick the padded shape, both as in YOLOv5's ``val.py`` (facts learned from its
``utils/dataloaders.py`` and ``utils/augmentations.py``, implemented here independently):

* **square**: every image goes to ``img_size x img_size``;
* **rect** (``val.py``'s default at batch 1): the shape follows the image's aspect ratio
  ``ar = h / w``: ``[ar, 1]`` for landscape, ``[1, 1 / ar]`` for portrait, ``[1, 1]`` for square,
  then ``ceil(s * img_size / stride + pad) * stride`` with ``pad = 0.5``. The half-stride pad
  means even a 640x480 image is fed as 512x672 at ``img_size`` 640, not 480x640.

The evaluation pipeline is two steps, also as in ``val.py``: first the long side is resized to
``img_size`` (new size ``ceil(w * r), ceil(h * r)``; area averaging when shrinking, bilinear when
enlarging), then the image is centred on a grey (114) canvas of the chosen shape without
further scaling. `LetterboxInfo` keeps what is needed to map boxes back
(`zoo.det.postprocess.scale_boxes`).

Resizing uses OpenCV (``opencv-python-headless``, or a system OpenCV such as JetPack's) with
INTER_AREA / INTER_LINEAR, like the reference, and falls back to Pillow (BOX / BILINEAR) when
``cv2`` is not importable; `RESIZE_BACKEND` says which, and evaluation results record it. The
two differ only by rounding (at most 1 grey level on the coco-tiny val images), yet that moves
yolov5n's coco-tiny mAP50-95 / mAP50 by about 0.001 / 0.002 (80 images, 14 of them resized):
with OpenCV the zoo reproduces YOLOv5's published val figure, with Pillow it does not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from zoo.data.errors import DataError

try:  # OpenCV's resize is what the reference numbers were made with (see the docstring)
    import cv2
except ImportError:  # pragma: no cover - depends on the environment
    cv2 = None

PAD_VALUE = 114  # YOLOv5's letterbox grey
RESIZE_BACKEND = "opencv" if cv2 is not None else "pillow"


@dataclass(frozen=True)
class LetterboxInfo:
    """How an image was letterboxed: enough to map boxes back to the original pixels.

    ``gain`` is (gy, gx) = resized size / original size per axis; ``offset`` (top, left) is the
    grey band above / left of the image in the network input. ``half_pad`` (dh / 2, dw / 2) is
    the nominal, possibly fractional, half padding that YOLOv5 subtracts when mapping back (it
    places the image at the floor of it, so its boxes come out up to half a pixel off); kept
    only for a bit-faithful comparison with the reference implementation.
    """

    orig_shape: tuple[int, int]  # (h0, w0)
    shape: tuple[int, int]  # (H, W) of the network input
    gain: tuple[float, float]  # (gy, gx)
    offset: tuple[int, int]  # (top, left)
    half_pad: tuple[float, float]  # (dh / 2, dw / 2)

    def to_dict(self) -> dict:
        return {"orig_shape": list(self.orig_shape), "shape": list(self.shape),
                "gain": list(self.gain), "offset": list(self.offset),
                "half_pad": list(self.half_pad)}


def rect_shape(h: int, w: int, img_size: int = 640, *, stride: int = 32,
               pad: float = 0.5) -> tuple[int, int]:
    """YOLOv5 val's batch-1 "rect" input shape (H, W) for an ``h x w`` image."""
    if h <= 0 or w <= 0:
        raise DataError(f"rect_shape needs a positive image size, got {h}x{w}")
    ar = h / w
    if ar < 1:
        rel = (ar, 1.0)
    elif ar > 1:
        rel = (1.0, 1.0 / ar)
    else:
        rel = (1.0, 1.0)
    return tuple(int(math.ceil(s * img_size / stride + pad)) * stride for s in rel)  # type: ignore[return-value]


def check_stride_multiple(size: int, stride: int = 32) -> int:
    if size <= 0 or size % stride:
        raise DataError(f"image size {size} must be a positive multiple of the stride {stride}")
    return size


def resize(image: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Resize HxWx3 uint8 to (w, h): area averaging when shrinking, bilinear when enlarging.

    One choice for the whole image, as YOLOv5 makes it (OpenCV INTER_AREA / INTER_LINEAR;
    Pillow BOX / BILINEAR without OpenCV).
    """
    h, w = image.shape[:2]
    nw, nh = int(size_wh[0]), int(size_wh[1])
    if (nw, nh) == (w, h):
        return image
    if nw <= 0 or nh <= 0:
        raise DataError(f"cannot resize a {w}x{h} image to {nw}x{nh}")
    shrink = nw * nh < w * h
    if cv2 is not None:
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        return cv2.resize(np.ascontiguousarray(image), (nw, nh), interpolation=interp)
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize((nw, nh), resample=resample))


def letterbox(image: np.ndarray, shape: tuple[int, int], *, scaleup: bool = True,
              color: int = PAD_VALUE) -> tuple[np.ndarray, LetterboxInfo]:
    """Fit ``image`` (HxWx3 uint8) into ``shape`` (H, W) keeping its aspect ratio, centred on
    grey; ``scaleup=False`` never enlarges (evaluation)."""
    h0, w0 = image.shape[:2]
    H, W = int(shape[0]), int(shape[1])
    r = min(H / h0, W / w0)
    if not scaleup:
        r = min(r, 1.0)
    nw, nh = int(round(w0 * r)), int(round(h0 * r))
    out, info = _place(resize(image, (nw, nh)), (H, W), color)
    return out, LetterboxInfo(orig_shape=(h0, w0), shape=(H, W), gain=(nh / h0, nw / w0),
                              offset=info[0], half_pad=info[1])


def eval_letterbox(image: np.ndarray, img_size: int = 640, *, rect: bool = True,
                   stride: int = 32, pad: float = 0.5) -> tuple[np.ndarray, LetterboxInfo]:
    """The YOLOv5 ``val.py`` input pipeline for one image (batch 1).

    Long side to ``img_size`` (``ceil`` of the scaled sides), then centred on a grey canvas of
    `rect_shape` (``rect``) or ``img_size`` square, never scaled a second time.
    """
    check_stride_multiple(img_size, stride)
    h0, w0 = image.shape[:2]
    r = img_size / max(h0, w0)
    if r != 1:
        resized = resize(image, (math.ceil(w0 * r), math.ceil(h0 * r)))
    else:
        resized = image
    h1, w1 = resized.shape[:2]
    shape = rect_shape(h0, w0, img_size, stride=stride, pad=pad) if rect else (img_size, img_size)
    if h1 > shape[0] or w1 > shape[1]:  # cannot happen with pad >= 0; guard against misuse
        raise DataError(f"resized image {w1}x{h1} does not fit the letterbox {shape[1]}x{shape[0]}")
    out, (offset, half_pad) = _place(resized, shape, PAD_VALUE)
    return out, LetterboxInfo(orig_shape=(h0, w0), shape=(int(shape[0]), int(shape[1])),
                              gain=(h1 / h0, w1 / w0), offset=offset, half_pad=half_pad)


def _place(image: np.ndarray, shape: tuple[int, int], color: int):
    """Centre ``image`` on a ``shape`` canvas; the odd pixel of padding goes bottom / right."""
    h, w = image.shape[:2]
    H, W = shape
    dh, dw = H - h, W - w
    top, left = dh // 2, dw // 2
    out = np.full((H, W, image.shape[2]), color, dtype=image.dtype)
    out[top:top + h, left:left + w] = image
    return out, ((top, left), (dh / 2, dw / 2))


def boxes_to_letterbox(boxes: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """Original-pixel xyxy boxes -> network-input pixels (the inverse of ``scale_boxes``)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    gy, gx = info.gain
    top, left = info.offset
    b[:, [0, 2]] = b[:, [0, 2]] * gx + left
    b[:, [1, 3]] = b[:, [1, 3]] * gy + top
    return b


class DetEvalTransform:
    """`DetSample` -> (network input CxHxW float32, `LetterboxInfo`, the sample) for evaluation.

    ``preprocess`` is a `zoo.data.Preprocess` (official YOLOv5 weights: mean 0, std 255).
    """

    def __init__(self, preprocess, img_size: int = 640, *, rect: bool = True,
                 stride: int = 32) -> None:
        self.preprocess = preprocess
        self.img_size = check_stride_multiple(int(img_size), stride)
        self.rect = bool(rect)
        self.stride = stride

    def __call__(self, sample):
        boxed, info = eval_letterbox(sample.image, self.img_size, rect=self.rect,
                                     stride=self.stride)
        return self.preprocess(boxed), info, sample

    def __repr__(self) -> str:
        return f"DetEvalTransform(img_size={self.img_size}, rect={self.rect})"

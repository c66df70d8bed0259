"""Pixels in and masks out, with numpy and Pillow only (no torch: the ONNX Runtime and TensorRT
cell processes must not pay ~600 MB of RSS for importing it).

`preprocess_batch` reproduces `zoo.data.Preprocess.batch_numpy` bit for bit from the dict that
`Preprocess.to_dict()` stores next to the weights (tests/test_bench_units.py checks it), and
`resize_image`/`resize_label` do what the zoo's evaluation does (bilinear image, nearest label).
"""
from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
from PIL import Image


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

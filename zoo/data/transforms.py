"""Pixel pre-processing and the train / eval augmentation pipelines.

`Preprocess` is deliberately separate from augmentation: it is the contract between pixels and
a network (and the ONNX / TensorRT engines exported from it), so it must be reproducible exactly
at benchmark time from a small dict stored next to the weights. Official checkpoints were trained
with their authors' own normalisation (ESPNet: BGR, ((x - mean) / std) / 255), which is why
channel order and an extra scale are part of it.

The transforms work on numpy/PIL (no torchvision dependency; Jetson users bring their own builds)
and keep per-sample work small because the train loader runs on 0-2 workers of a 2-core box.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from PIL import Image

from zoo.data.errors import DataError

# ITU-R BT.601 luma weights, used for saturation / contrast jitter.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _triple(value: Any, what: str) -> tuple[float, float, float]:
    try:
        t = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        t = ()
    if len(t) != 3:
        raise DataError(f"preprocess {what} must be 3 numbers, got {value!r}")
    return t  # type: ignore[return-value]


def _number(value: Any, what: str) -> float:
    """Accept 0.0039.. as well as the string "1/255" that is clearer in a YAML file."""
    try:
        return float(Fraction(value)) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        raise DataError(f"preprocess {what} must be a number like 1.0 or '1/255', got {value!r}")


@dataclass(frozen=True)
class Preprocess:
    """How uint8 RGB pixels become the network input: ``((x[ch] - mean) / std) * scale``.

    ``mean``/``std`` are given in the channel order that is fed to the network (BGR when
    ``bgr``), on the 0-255 scale. The affine is precomputed as ``x * a + b`` so one pass does it.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr: bool = False
    scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _triple(self.mean, "mean"))
        object.__setattr__(self, "std", _triple(self.std, "std"))
        object.__setattr__(self, "scale", _number(self.scale, "scale"))
        object.__setattr__(self, "bgr", bool(self.bgr))
        if min(self.std) <= 0:
            raise DataError(f"preprocess std must be > 0, got {self.std}")

    @classmethod
    def from_card(cls, card: Any) -> "Preprocess":
        """The dataset's own normalisation: RGB, train-split mean/std, no extra scale."""
        return cls(mean=tuple(card.mean), std=tuple(card.std), bgr=False, scale=1.0)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        """Inverse of `to_dict`; unknown keys are an error so a typo cannot go unnoticed."""
        if not isinstance(d, dict):
            raise DataError(f"preprocess must be a mapping with mean/std/bgr/scale, got {d!r}")
        unknown = set(d) - {"mean", "std", "bgr", "scale"}
        if unknown or "mean" not in d or "std" not in d:
            raise DataError(
                f"preprocess needs keys mean, std (optional bgr, scale); got {sorted(d)}"
            )
        return cls(mean=d["mean"], std=d["std"], bgr=d.get("bgr", False),
                   scale=d.get("scale", 1.0))

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "bgr": self.bgr,
                "scale": self.scale}

    # -- the affine, as per-channel arrays in *RGB* input order -------------------------------
    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        mean = np.asarray(self.mean, dtype=np.float64)
        std = np.asarray(self.std, dtype=np.float64)
        a = self.scale / std
        b = -mean * a
        if self.bgr:  # coefficients are given for B,G,R; we apply them after reordering
            a, b = a[::-1], b[::-1]
        return a.astype(np.float32), b.astype(np.float32)

    @property
    def rgb_mean(self) -> tuple[float, float, float]:
        """The mean colour in RGB order (what padding should be filled with)."""
        m = self.mean[::-1] if self.bgr else self.mean
        return tuple(m)  # type: ignore[return-value]

    def _hwc(self, image: np.ndarray) -> np.ndarray:
        """Normalised float32 HWC, channels still RGB-indexed but ordered as the network wants."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise DataError(f"preprocess expects an HxWx3 RGB image, got shape {image.shape}")
        a, b = self._affine()
        x = image.astype(np.float32) * a + b  # per-channel, RGB order
        return x[..., ::-1] if self.bgr else x

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """uint8 (or float 0-255) HxWx3 RGB -> float32 CxHxW tensor."""
        x = self._hwc(np.asarray(image))
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

    def batch_numpy(self, images: list[np.ndarray]) -> np.ndarray:
        """Several same-size HxWx3 RGB images -> float32 NCHW array (ONNX Runtime input)."""
        if len(images) == 0:
            raise DataError("preprocess.batch_numpy got no images")
        stacked = np.stack([np.asarray(im) for im in images])
        if stacked.ndim != 4 or stacked.shape[3] != 3:
            raise DataError(f"batch_numpy expects NxHxWx3 RGB images, got {stacked.shape}")
        a, b = self._affine()
        x = stacked.astype(np.float32) * a + b
        if self.bgr:
            x = x[..., ::-1]
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def denormalize(self, tensor: torch.Tensor | np.ndarray) -> np.ndarray:
        """CxHxW network input back to a uint8 HxWx3 RGB image (for visualising batches)."""
        x = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)
        x = x.transpose(1, 2, 0).astype(np.float32)
        if self.bgr:
            x = x[..., ::-1]
        a, b = self._affine()
        return np.clip(np.rint((x - b) / a), 0, 255).astype(np.uint8)


def _unpack(sample: Any) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(sample, "image") and hasattr(sample, "label"):
        return sample.image, sample.label
    image, label = sample
    return image, label


def _label_tensor(label: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))


class _WorkerRNG:
    """A numpy Generator that is re-seeded in each DataLoader worker process.

    A forked worker inherits a copy of the parent's generator, so without re-seeding every
    worker would produce the same augmentations. We re-seed when the (pid, worker id) changes,
    from ``torch.initial_seed()``, which the DataLoader sets to base_seed + worker_id and which
    changes every epoch for non-persistent workers (and follows ``torch.manual_seed``).
    """

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self._rng: np.random.Generator | None = None
        self._owner: tuple[int, int] | None = None

    def get(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        owner = (os.getpid(), -1 if info is None else info.id)
        if self._rng is None or owner != self._owner:
            if info is None:
                entropy = [self.seed] if self.seed is not None else [torch.initial_seed()]
            else:
                entropy = [torch.initial_seed()] + ([self.seed] if self.seed is not None else [])
            self._rng = np.random.default_rng(entropy)
            self._owner = owner
        return self._rng

    def __getstate__(self) -> dict[str, Any]:  # spawned workers re-seed anyway; keep pickles small
        return {"seed": self.seed, "_rng": None, "_owner": None}


def _jitter_matrix(rng: np.random.Generator) -> np.ndarray:
    """One 3x3 colour matrix for brightness, saturation and a small hue rotation.

    Composing them into a single matrix keeps photometric jitter to one matmul per image.
    """
    brightness = rng.uniform(0.75, 1.25)
    saturation = rng.uniform(0.7, 1.3)
    angle = math.radians(rng.uniform(-10.0, 10.0))
    # Saturation: blend with the luma image (rows all equal to the luma weights).
    sat = saturation * np.eye(3) + (1 - saturation) * np.tile(_LUMA.astype(np.float64), (3, 1))
    # Hue: rotate about the grey axis (Rodrigues' formula with unit axis (1,1,1)/sqrt(3)).
    c, s = math.cos(angle), math.sin(angle)
    k = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / math.sqrt(3)
    hue = np.eye(3) + s * k + (1 - c) * (k @ k)
    return brightness * (hue @ sat)


class TrainTransform:
    """Random scale, pad, crop, flip and mild colour jitter -> (float32 CxHxW, int64 HxW).

    Scale and crop are done in one PIL resize over the source box of the crop window, so a 2x
    scale never materialises the full up-scaled image. Padding uses the mean colour (≈0 after
    normalisation) for the image and ``ignore_index`` for the label, so padded pixels neither
    bias the input statistics nor contribute to the loss.
    """

    def __init__(
        self,
        preprocess: Preprocess,
        crop_size: tuple[int, int] = (360, 480),
        scale_range: tuple[float, float] = (0.5, 2.0),
        flip: bool = True,
        jitter: bool = True,
        ignore_index: int = 255,
        rng_seed: int | None = None,
    ) -> None:
        self.preprocess = preprocess
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise DataError(f"scale_range must be 0 < lo <= hi, got {scale_range}")
        self.flip = flip
        self.jitter = jitter
        self.ignore_index = int(ignore_index)
        self.rng_seed = rng_seed
        self._rng = _WorkerRNG(rng_seed)
        self._pad_rgb = tuple(int(round(v)) for v in preprocess.rgb_mean)

    def __call__(self, sample: Any) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = _unpack(sample)
        rng = self._rng.get()
        h, w = label.shape[:2]
        ch, cw = self.crop_size
        s = rng.uniform(*self.scale_range)
        sh, sw = max(1, round(h * s)), max(1, round(w * s))
        # Crop window in scaled coordinates; when the scaled image is smaller than the crop,
        # the window starts before the image and the uncovered part is padding.
        y0 = int(rng.integers(0, sh - ch + 1)) if sh >= ch else -int(rng.integers(0, ch - sh + 1))
        x0 = int(rng.integers(0, sw - cw + 1)) if sw >= cw else -int(rng.integers(0, cw - sw + 1))
        oy0, ox0 = max(y0, 0), max(x0, 0)
        oy1, ox1 = min(y0 + ch, sh), min(x0 + cw, sw)
        fy, fx = h / sh, w / sw
        box = (ox0 * fx, oy0 * fy, min(w, ox1 * fx), min(h, oy1 * fy))  # float rounding guard
        size = (ox1 - ox0, oy1 - oy0)
        img_part = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR, box=box))
        lab_part = np.asarray(Image.fromarray(label).resize(size, Image.NEAREST, box=box))
        if size == (cw, ch):
            img, lab = img_part, lab_part
        else:
            img = np.empty((ch, cw, 3), np.uint8)
            img[:] = self._pad_rgb
            lab = np.full((ch, cw), self.ignore_index, np.uint8)
            py, px = oy0 - y0, ox0 - x0
            img[py:py + size[1], px:px + size[0]] = img_part
            lab[py:py + size[1], px:px + size[0]] = lab_part
        if self.flip and rng.random() < 0.5:
            img, lab = img[:, ::-1], lab[:, ::-1]
        x: np.ndarray = img
        if self.jitter and rng.random() < 0.8:
            m = _jitter_matrix(rng)
            contrast = rng.uniform(0.75, 1.25)
            xf = img.reshape(-1, 3).astype(np.float32)
            mean_luma = float((xf.mean(axis=0) * _LUMA).sum())
            # x' = contrast * (M x) + (1 - contrast) * mean, as one affine
            xf = xf @ (contrast * m.T).astype(np.float32) + np.float32((1 - contrast) * mean_luma)
            x = np.clip(xf, 0, 255, out=xf).reshape(ch, cw, 3)
        return self.preprocess(x), _label_tensor(lab)

    def __repr__(self) -> str:
        return (f"TrainTransform(crop_size={self.crop_size}, scale_range={self.scale_range}, "
                f"flip={self.flip}, jitter={self.jitter}, ignore_index={self.ignore_index})")


class EvalTransform:
    """Whole image (optionally resized to ``size`` = (H, W)) -> (float32 CxHxW, int64 HxW).

    mIoU is reported at the label's resolution when ``size`` is None; a fixed ``size`` is for
    benchmarking engines built for one input shape (label resized with nearest neighbour so
    class ids are never blended).
    """

    def __init__(self, preprocess: Preprocess, size: tuple[int, int] | None = None) -> None:
        self.preprocess = preprocess
        self.size = None if size is None else (int(size[0]), int(size[1]))

    def __call__(self, sample: Any) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = _unpack(sample)
        if self.size is not None and tuple(label.shape[:2]) != self.size:
            wh = (self.size[1], self.size[0])
            image = np.asarray(Image.fromarray(image).resize(wh, Image.BILINEAR))
            label = np.asarray(Image.fromarray(label).resize(wh, Image.NEAREST))
        return self.preprocess(image), _label_tensor(label)

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size})"

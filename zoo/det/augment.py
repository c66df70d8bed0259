"""Train-time data for detectors: letterbox, random affine, mosaic, HSV, flip, and the collate.

`DetTrainDataset` wraps a `zoo.data.DetectionDataset` (items `DetSample`: HxWx3 uint8 RGB,
xyxy boxes in original pixels, class indices) and yields, per image,

    image   float32 (3, S, S): the network input after `zoo.data.Preprocess` (RGB / 255 for
            detection cards, i.e. 0..1)
    labels  float32 (K, 5): ``[class, cx, cy, w, h]``, box normalised to the S x S input

and `detection_collate` stacks a batch into ``images (B, 3, S, S)`` and ``targets (M, 6)``
``[image_index, class, cx, cy, w, h]``, the layout `zoo.det.loss.YOLOv5Loss` takes.

The pipeline follows YOLOv5's training loader (facts from ultralytics/yolov5
``utils/dataloaders.py`` and ``utils/augmentations.py``; our own code):

1. letterbox to S x S (aspect kept, grey 114 padding, `zoo.data.letterbox.letterbox`), or,
   with probability ``mosaic``, a 2S x 2S mosaic of this image and three random others around a
   random centre in [S/2, 3S/2] (each image's long side resized to S);
2. random affine: scale ``s ~ U(1 - scale, 1 + scale)`` about the centre, translation
   ``U(-translate, translate) * S``, output S x S (a mosaic is cut to S x S by the same warp);
   boxes follow, are clipped to the image, and boxes that became degenerate are dropped: width
   or height <= ``min_wh`` px, less than ``min_area_ratio`` of their scaled area left, or an
   aspect ratio beyond ``max_aspect`` (the reference's ``box_candidates``: 2 px, 0.1, 100);
3. HSV gains ``1 + U(-1, 1) * (hsv_h, hsv_s, hsv_v)`` applied through look-up tables;
4. horizontal flip with probability ``fliplr``.

With ``augment=None`` only step 1 (plain letterbox) runs and degenerate boxes are still dropped.
Random numbers come from a per-worker numpy generator (`zoo.data.transforms._WorkerRNG`), so a
fixed ``rng_seed`` makes the stream reproducible and DataLoader workers differ.

OpenCV (a core dependency) does the warps and colour conversion; without it Pillow does
(bilinear affine, HSV via ``Image.convert``), as `zoo.data.letterbox` falls back.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from zoo.data.letterbox import PAD_VALUE, boxes_to_letterbox, cv2, letterbox, resize
from zoo.data.transforms import Preprocess, _WorkerRNG

__all__ = ["AugmentConfig", "DetTrainDataset", "detection_collate", "random_affine", "random_hsv",
           "hflip", "box_candidates", "to_labels"]


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths (YOLOv5 hyp.scratch-low values, mosaic off by default)."""

    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    translate: float = 0.1
    scale: float = 0.5
    fliplr: float = 0.5
    mosaic: float = 0.0  # probability; the reference uses 1.0, which needs large data sets
    min_wh: float = 2.0
    min_area_ratio: float = 0.1
    max_aspect: float = 100.0

    @classmethod
    def from_mapping(cls, values: Any) -> "AugmentConfig":
        """Pick this class's fields out of a dict or dataclass (e.g. a `DetRecipe`)."""
        d = values if isinstance(values, dict) else asdict(values)
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# box helpers (xyxy float arrays in pixels)
# --------------------------------------------------------------------------------------------

def box_candidates(before: np.ndarray, after: np.ndarray, *, min_wh: float = 2.0,
                   min_area_ratio: float = 0.1, max_aspect: float = 100.0,
                   eps: float = 1e-16) -> np.ndarray:
    """Boolean mask of the boxes worth keeping after a transform (module docstring, step 2).

    ``before`` are the boxes in the output's pixel scale without clipping (the transform's
    scale applied), ``after`` the clipped boxes.
    """
    w0, h0 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w1, h1 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    aspect = np.maximum(w1 / (h1 + eps), h1 / (w1 + eps))
    return ((w1 > min_wh) & (h1 > min_wh) & (w1 * h1 / (w0 * h0 + eps) > min_area_ratio)
            & (aspect < max_aspect))


def _apply_affine(boxes: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Axis-aligned bounds of the 4 transformed corners of each xyxy box (m: 2x3)."""
    if not len(boxes):
        return boxes.reshape(0, 4).astype(np.float64)
    x0, y0, x1, y1 = boxes.T
    xs = np.stack([x0, x1, x0, x1], axis=1)
    ys = np.stack([y0, y0, y1, y1], axis=1)
    tx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    ty = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    return np.stack([tx.min(1), ty.min(1), tx.max(1), ty.max(1)], axis=1)


def _warp(image: np.ndarray, m: np.ndarray, out: int) -> np.ndarray:
    if cv2 is not None:
        return cv2.warpAffine(np.ascontiguousarray(image), m, (out, out), flags=cv2.INTER_LINEAR,
                              borderValue=(PAD_VALUE,) * 3)
    inv = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))[:2]  # PIL maps output -> input
    return np.asarray(Image.fromarray(image).transform(
        (out, out), Image.Transform.AFFINE, data=tuple(inv.reshape(-1)),
        resample=Image.Resampling.BILINEAR, fillcolor=(PAD_VALUE,) * 3))


def random_affine(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, out: int,
                  rng: np.random.Generator, *, scale: float = 0.5, translate: float = 0.1,
                  centre: tuple[float, float] | None = None, min_wh: float = 2.0,
                  min_area_ratio: float = 0.1, max_aspect: float = 100.0,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale about ``centre`` (default: the image centre) and translate into an ``out`` x ``out``
    image; boxes follow, are clipped, and degenerate ones are dropped (`box_candidates`)."""
    h, w = image.shape[:2]
    cx, cy = centre if centre is not None else (w / 2, h / 2)
    s = float(rng.uniform(1 - scale, 1 + scale))
    tx = float(rng.uniform(0.5 - translate, 0.5 + translate)) * out
    ty = float(rng.uniform(0.5 - translate, 0.5 + translate)) * out
    m = np.array([[s, 0.0, tx - s * cx], [0.0, s, ty - s * cy]])
    warped = _warp(image, m, out)
    moved = _apply_affine(boxes, m)
    clipped = moved.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, out)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, out)
    keep = box_candidates(moved, clipped, min_wh=min_wh, min_area_ratio=min_area_ratio,
                          max_aspect=max_aspect)
    return warped, clipped[keep], classes[keep]


def random_hsv(image: np.ndarray, rng: np.random.Generator, hgain: float = 0.015,
               sgain: float = 0.7, vgain: float = 0.4) -> np.ndarray:
    """Random hue / saturation / value gains (RGB uint8 in, new array out).

    Gains ``1 + U(-1, 1) * g``; hue is multiplied and wraps around (the reference's rule),
    saturation and value are multiplied and clipped.
    """
    if not (hgain or sgain or vgain):
        return image
    r = rng.uniform(-1, 1, 3) * np.array([hgain, sgain, vgain]) + 1
    hue_range = 180 if cv2 is not None else 256  # OpenCV stores hue / 2; Pillow 0..255
    x = np.arange(256, dtype=np.float64)
    lut_h = ((x * r[0]) % hue_range).astype(np.uint8)
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    if cv2 is not None:
        hsv = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV)
        hsv = np.stack([lut_h[hsv[..., 0]], lut_s[hsv[..., 1]], lut_v[hsv[..., 2]]], axis=-1)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    hsv = np.asarray(Image.fromarray(image).convert("HSV"))
    hsv = np.stack([lut_h[hsv[..., 0]], lut_s[hsv[..., 1]], lut_v[hsv[..., 2]]], axis=-1)
    return np.asarray(Image.fromarray(hsv, mode="HSV").convert("RGB"))


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror an image and its xyxy pixel boxes left-right."""
    w = image.shape[1]
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), flipped


def to_labels(boxes: np.ndarray, classes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """xyxy pixel boxes + classes -> float32 (K, 5) ``[class, cx, cy, w, h]`` normalised to
    ``size`` = (H, W)."""
    h, w = size
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = np.empty((len(b), 5), dtype=np.float32)
    out[:, 0] = classes
    out[:, 1] = (b[:, 0] + b[:, 2]) / 2 / w
    out[:, 2] = (b[:, 1] + b[:, 3]) / 2 / h
    out[:, 3] = (b[:, 2] - b[:, 0]) / w
    out[:, 4] = (b[:, 3] - b[:, 1]) / h
    return out


# --------------------------------------------------------------------------------------------
# the training dataset
# --------------------------------------------------------------------------------------------

class DetTrainDataset(torch.utils.data.Dataset):
    """Augmented, letterboxed training items of a `DetectionDataset` (module docstring)."""

    def __init__(self, base: Any, img_size: int, preprocess: Preprocess,
                 augment: AugmentConfig | None = None, *, rng_seed: int | None = None) -> None:
        if img_size <= 0 or img_size % 32:
            raise ValueError(f"img_size must be a positive multiple of 32, got {img_size}")
        self.base = base
        self.img_size = int(img_size)
        self.preprocess = preprocess
        self.augment = augment
        self._rng = _WorkerRNG(rng_seed)

    def __len__(self) -> int:
        return len(self.base)

    def _letterboxed(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sample = self.base.load(index)
        s = self.img_size
        image, info = letterbox(sample.image, (s, s))
        return image, boxes_to_letterbox(sample.boxes, info), np.asarray(sample.classes)

    def _mosaic(self, index: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = self.img_size
        canvas = np.full((2 * s, 2 * s, 3), PAD_VALUE, dtype=np.uint8)
        xc, yc = (int(rng.uniform(s / 2, 3 * s / 2)) for _ in range(2))
        others = rng.integers(0, len(self.base), size=3).tolist()
        all_boxes, all_classes = [], []
        for k, i in enumerate([index, *others]):
            sample = self.base.load(i)
            h0, w0 = sample.image.shape[:2]
            r = s / max(h0, w0)
            nw, nh = max(1, round(w0 * r)), max(1, round(h0 * r))
            img = resize(sample.image, (nw, nh))
            # canvas window (x0, y0, x1, y1) per quadrant; the image touches the centre point
            if k == 0:
                cx0, cy0, cx1, cy1 = max(xc - nw, 0), max(yc - nh, 0), xc, yc
                ix0, iy0 = nw - (cx1 - cx0), nh - (cy1 - cy0)
            elif k == 1:
                cx0, cy0, cx1, cy1 = xc, max(yc - nh, 0), min(xc + nw, 2 * s), yc
                ix0, iy0 = 0, nh - (cy1 - cy0)
            elif k == 2:
                cx0, cy0, cx1, cy1 = max(xc - nw, 0), yc, xc, min(yc + nh, 2 * s)
                ix0, iy0 = nw - (cx1 - cx0), 0
            else:
                cx0, cy0, cx1, cy1 = xc, yc, min(xc + nw, 2 * s), min(yc + nh, 2 * s)
                ix0, iy0 = 0, 0
            canvas[cy0:cy1, cx0:cx1] = img[iy0:iy0 + cy1 - cy0, ix0:ix0 + cx1 - cx0]
            b = np.asarray(sample.boxes, dtype=np.float64).reshape(-1, 4) * [nw / w0, nh / h0, nw / w0, nh / h0]
            b += [cx0 - ix0, cy0 - iy0, cx0 - ix0, cy0 - iy0]
            all_boxes.append(b)
            all_classes.append(np.asarray(sample.classes))
        boxes = np.concatenate(all_boxes)
        boxes = np.concatenate([boxes[:, :2].clip(0, 2 * s), boxes[:, 2:].clip(0, 2 * s)], axis=1)
        return canvas, boxes, np.concatenate(all_classes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        aug = self.augment
        s = self.img_size
        if aug is None:
            image, boxes, classes = self._letterboxed(index)
            keep = box_candidates(boxes, boxes, min_wh=AugmentConfig.min_wh, max_aspect=AugmentConfig.max_aspect)
            boxes, classes = boxes[keep], classes[keep]
        else:
            rng = self._rng.get()
            opts = dict(scale=aug.scale, translate=aug.translate, min_wh=aug.min_wh,
                        min_area_ratio=aug.min_area_ratio, max_aspect=aug.max_aspect)
            if aug.mosaic > 0 and rng.random() < aug.mosaic:
                canvas, boxes, classes = self._mosaic(index, rng)
                image, boxes, classes = random_affine(canvas, boxes, classes, s, rng,
                                                      centre=(s, s), **opts)
            else:
                image, boxes, classes = self._letterboxed(index)
                image, boxes, classes = random_affine(image, boxes, classes, s, rng, **opts)
            image = random_hsv(image, rng, aug.hsv_h, aug.hsv_s, aug.hsv_v)
            if rng.random() < aug.fliplr:
                image, boxes = hflip(image, boxes)
        labels = to_labels(boxes, classes, (s, s))
        return self.preprocess(image), torch.from_numpy(labels)

    def __repr__(self) -> str:
        return f"DetTrainDataset({self.base!r}, img_size={self.img_size}, augment={self.augment})"


def detection_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """[(image (3, S, S), labels (K, 5))] -> images (B, 3, S, S), targets (M, 6) with the image's
    batch index prepended to each ``[class, cx, cy, w, h]`` row."""
    images = torch.stack([im for im, _ in batch])
    rows = [torch.cat((torch.full((len(lab), 1), float(i)), lab), dim=1)
            for i, (_, lab) in enumerate(batch)]
    targets = torch.cat(rows) if rows else torch.zeros((0, 6))
    return images, targets

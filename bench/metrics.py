"""Parity against the FP32 reference, in numpy (the cell process must not import torch):
pixel agreement of segmentation masks, box agreement of detections.

The confusion matrix is `zoo.metrics.ConfusionMatrix`, which is numpy-only for this reason.
"""
from __future__ import annotations

import numpy as np

from zoo.metrics import ConfusionMatrix  # noqa: F401  (re-exported for the cell)


class Agreement:
    """Fraction of pixels (all of them, ignore label or not) where two masks give the same class."""

    def __init__(self) -> None:
        self.equal = 0
        self.total = 0

    def update(self, mask: np.ndarray, reference: np.ndarray) -> None:
        mask, reference = np.asarray(mask), np.asarray(reference)
        if mask.shape != reference.shape:
            raise ValueError(f"mask shape {mask.shape} differs from the reference's {reference.shape}")
        self.equal += int(np.count_nonzero(mask == reference))
        self.total += int(mask.size)

    @property
    def value(self) -> float | None:
        return self.equal / self.total if self.total else None


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: (len(a), len(b)); equal zero-area boxes count as IoU 1."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clip(0).prod(axis=2)
    union = area_a[:, None] + area_b[None, :] - inter
    # Two zero-area boxes (clipped flat at an image border) have no IoU; count equal ones as 1 so
    # that identical outputs agree fully.
    same = np.all(np.abs(a[:, None, :] - b[None, :, :]) <= 1e-6, axis=2).astype(np.float64)
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), same)


class BoxAgreement:
    """Detection parity with the PyTorch FP32 reference, image by image (MEASUREMENT.md: "detection
    needs box-match agreement").

    Both sides are the deployment output (NMS preset "deploy": confidence 0.25, IoU 0.45, best
    class) as (K, 6) ``[x0, y0, x1, y1, score, class]`` in original pixels. Reference boxes, best
    score first, are matched greedily to the unmatched cell box of the same class with the highest
    IoU, if that IoU is >= `iou_thres` (0.5). Reported: ``f1`` = 2 matched / (reference boxes +
    cell boxes) (the headline `box_agreement`: it drops for missing *and* for extra boxes),
    ``recall`` = matched / reference boxes, ``precision`` = matched / cell boxes, and the mean
    IoU of the matched pairs (how exactly the boxes sit). None where there is nothing to compare.
    """

    def __init__(self, iou_thres: float = 0.5) -> None:
        self.iou_thres = float(iou_thres)
        self.matched = 0
        self.ref_boxes = 0
        self.boxes = 0
        self.iou_sum = 0.0

    def update(self, dets: np.ndarray, ref: np.ndarray) -> None:
        dets = np.asarray(dets, dtype=np.float64).reshape(-1, 6)
        ref = np.asarray(ref, dtype=np.float64).reshape(-1, 6)
        self.ref_boxes += len(ref)
        self.boxes += len(dets)
        if not len(ref) or not len(dets):
            return
        iou = box_iou(ref[:, :4], dets[:, :4])
        iou[ref[:, 5][:, None] != dets[:, 5][None, :]] = -1.0  # same class only
        taken = np.zeros(len(dets), dtype=bool)
        for i in np.argsort(-ref[:, 4], kind="stable"):
            row = np.where(taken, -1.0, iou[i])
            j = int(row.argmax())
            if row[j] >= self.iou_thres:
                taken[j] = True
                self.matched += 1
                self.iou_sum += float(row[j])

    def as_dict(self) -> dict:
        total = self.ref_boxes + self.boxes
        return {
            "f1": 2 * self.matched / total if total else None,
            "recall": self.matched / self.ref_boxes if self.ref_boxes else None,
            "precision": self.matched / self.boxes if self.boxes else None,
            "mean_iou": self.iou_sum / self.matched if self.matched else None,
            "matched": self.matched, "ref_boxes": self.ref_boxes, "boxes": self.boxes,
            "iou_thres": self.iou_thres,
        }

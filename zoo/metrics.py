"""Segmentation accuracy from one confusion matrix accumulated over a whole split.

Ground-truth pixels equal to `ignore_index` are dropped. A prediction outside
`0..num_classes-1` (for example the void channel of an official 12-output CamVid model) is
counted as wrong: it adds to its ground-truth row but to no class column, which is how the
official ESPNet evaluation treats void predictions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SegScores:
    miou: float
    pixel_accuracy: float
    per_class_iou: list[float]  # NaN for a class absent from both ground truth and prediction
    classes: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        per_class = {
            (self.classes[i] if i < len(self.classes) else str(i)): (None if np.isnan(v) else v)
            for i, v in enumerate(self.per_class_iou)
        }
        return {"miou": self.miou, "pixel_accuracy": self.pixel_accuracy, "per_class_iou": per_class}


class ConfusionMatrix:
    """Accumulates an (n, n+1) matrix: rows ground truth, columns prediction, last column 'other'.

    numpy only (torch tensors are accepted and converted), so benchmark cells that run ONNX
    Runtime can score without importing torch.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.n = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.mat = np.zeros((self.n, self.n + 1), dtype=np.int64)

    def update(self, pred, target) -> None:
        pred = _as_numpy(pred).reshape(-1).astype(np.int64)
        target = _as_numpy(target).reshape(-1).astype(np.int64)
        if pred.shape != target.shape:
            raise ValueError(f"prediction has {pred.size} pixels but the label has {target.size}")
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.size and (target.min() < 0 or target.max() >= self.n):
            raise ValueError(f"label value {int(target.max())} outside 0..{self.n - 1} (and not the ignore value)")
        pred = np.where((pred < 0) | (pred >= self.n), self.n, pred)
        self.mat += np.bincount(target * (self.n + 1) + pred, minlength=self.n * (self.n + 1)).reshape(
            self.n, self.n + 1
        )

    def merge(self, other: "ConfusionMatrix") -> None:
        self.mat += other.mat

    def scores(self, classes: tuple[str, ...] = ()) -> SegScores:
        mat = self.mat.astype(np.float64)
        tp = np.diagonal(mat).copy()
        gt_total = mat.sum(axis=1)  # includes 'other' predictions: they are false negatives
        pred_total = mat[:, : self.n].sum(axis=0)
        union = gt_total + pred_total - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
        valid = ~np.isnan(iou)
        miou = float(iou[valid].mean()) if valid.any() else float("nan")
        total = float(gt_total.sum())
        acc = float(tp.sum() / total) if total else float("nan")
        return SegScores(miou=miou, pixel_accuracy=acc, per_class_iou=[float(v) for v in iou], classes=tuple(classes))


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)

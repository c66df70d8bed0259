"""Instance metrics: panoptic quality for thing classes, and COCO mask AP via pycocotools.

PQ (Kirillov et al., CVPR 2019; cocodataset/panopticapi `evaluation.py`): per class, a predicted
and a ground-truth segment match when IoU > 0.5 (unique by construction);
PQ = sum IoU(TP) / (TP + FP/2 + FN/2) = SQ x RQ with SQ = mean IoU of the TPs and
RQ = TP / (TP + FP/2 + FN/2). Per-class values are averaged over the classes that have any
segment (TP + FP + FN > 0), as panopticapi does. Void handling follows panopticapi: void pixels
are left out of a predicted segment's union with a ground truth, and an unmatched prediction
that lies mostly (> 50 %) on void or on ignored ground truth of its class is not a false positive.

Restricted evaluation (the "touching" subset, `touching_instances`): ground-truth segments
outside the subset are *ignored* (neither TP nor FN); an unmatched prediction counts as a false
positive only when more than half of it lies on counted ground truth of its class.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from zoo.instances.pseudo import EIGHT


def touching_instances(ids: np.ndarray, classes: np.ndarray, *, gap: int = 1) -> np.ndarray:
    """Bool per id: does the instance come within `gap` pixels of another instance of its class?

    "Within `gap` pixels" means some pixel of one lies in the (2 gap + 1)^2 square neighbourhood
    (chessboard distance <= gap + 1) of a pixel of the other: gap 0 is 8-adjacency; the default
    gap 1 also counts two instances separated by a one-pixel line, e.g. the void outlines that the
    synthetic scenes (like CamVid) draw around some objects, which a predicted mask does not have.
    """
    n = len(classes)
    out = np.zeros(n, bool)
    size = 2 * gap + 3
    for k, sl in enumerate(ndi.find_objects(ids, max_label=n - 1), start=1):
        if sl is None or out[k]:
            continue
        sl = tuple(slice(max(0, s.start - gap - 1), s.stop + gap + 1) for s in sl)
        crop = ids[sl]
        near = ndi.binary_dilation(crop == k, np.ones((size, size), bool))
        others = np.unique(crop[near])
        others = others[(others != k) & (others != 0)]
        others = others[classes[others] == classes[k]]
        if len(others):
            out[k] = True
            out[others] = True
    return out


@dataclass
class ClassCounts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0

    def pq(self) -> tuple[float, float, float] | None:
        if self.tp + self.fp + self.fn == 0:
            return None
        rq = self.tp / (self.tp + 0.5 * self.fp + 0.5 * self.fn)
        sq = self.iou_sum / self.tp if self.tp else 0.0
        return sq * rq, sq, rq


@dataclass
class PQResult:
    pq: float
    sq: float
    rq: float
    per_class: dict[str, dict[str, float]]
    counts: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {"pq": self.pq, "sq": self.sq, "rq": self.rq, "per_class": self.per_class, "counts": self.counts}


@dataclass
class PQAccumulator:
    """Accumulates PQ counts over images for the given thing classes (ids of the label map)."""

    thing_classes: Sequence[int]
    names: Sequence[str] = ()
    counts: dict[int, ClassCounts] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = {int(c): ClassCounts() for c in self.thing_classes}

    def add(self, gt_ids: np.ndarray, gt_classes: np.ndarray, pred_ids: np.ndarray,
            pred_classes: np.ndarray, *, void: np.ndarray | None = None,
            counted: np.ndarray | None = None, min_area: int = 0) -> None:
        """One image. `*_classes[k]` is the class of id k (index 0 unused); `void` marks unlabelled
        pixels; `counted` (bool per ground-truth id) restricts the evaluation to those segments.

        `min_area` > 0 evaluates objects of at least that many pixels, the way COCO's area ranges
        and Cityscapes' minimum region size (100 px at 1024x2048) do: smaller ground-truth
        segments are ignored like void (an unmatched prediction lying mostly on them is no false
        positive), and so are unmatched predictions smaller than `min_area`."""
        gt_ids = np.asarray(gt_ids, np.int64)
        pred_ids = np.asarray(pred_ids, np.int64)
        if gt_ids.shape != pred_ids.shape:
            raise ValueError(f"ground truth {gt_ids.shape} and prediction {pred_ids.shape} differ in size")
        ng, npred = len(gt_classes), len(pred_classes)
        void = np.zeros(gt_ids.shape, bool) if void is None else np.asarray(void, bool)
        restricted = counted is not None
        counted = np.ones(ng, bool) if counted is None else np.asarray(counted, bool)
        gt_area = np.bincount(gt_ids.ravel(), minlength=ng)
        pred_area = np.bincount(pred_ids.ravel(), minlength=npred)
        if min_area > 0:
            counted = counted & (gt_area[:ng] >= min_area)
        pred_void = np.bincount(pred_ids[void], minlength=npred)
        # intersections of every (gt, pred) pair in one pass
        key = gt_ids.ravel() * npred + pred_ids.ravel()
        pairs, inter = np.unique(key, return_counts=True)
        g_of, p_of = np.divmod(pairs, npred)
        keep = (g_of > 0) & (p_of > 0)
        g_of, p_of, inter = g_of[keep], p_of[keep], inter[keep]
        same = gt_classes[g_of] == pred_classes[p_of]
        g_of, p_of, inter = g_of[same], p_of[same], inter[same]
        union = gt_area[g_of] + pred_area[p_of] - inter - pred_void[p_of]
        iou = inter / np.maximum(union, 1)
        match = iou > 0.5
        matched_gt = np.zeros(ng, bool)
        matched_pred = np.zeros(npred, bool)
        for g, p, v in zip(g_of[match], p_of[match], iou[match]):
            matched_gt[g] = matched_pred[p] = True
            if counted[g]:
                cc = self.counts.get(int(gt_classes[g]))
                if cc is not None:
                    cc.tp += 1
                    cc.iou_sum += float(v)
        for g in range(1, ng):
            if gt_area[g] and counted[g] and not matched_gt[g] and int(gt_classes[g]) in self.counts:
                self.counts[int(gt_classes[g])].fn += 1
        # pixels of each unmatched prediction on counted ground truth of its class
        on_counted = np.zeros(npred, np.int64)
        on_ignored = np.zeros(npred, np.int64)
        for g, p, n in zip(g_of, p_of, inter):
            (on_counted if counted[g] else on_ignored)[p] += n
        for p in range(1, npred):
            if not pred_area[p] or matched_pred[p] or int(pred_classes[p]) not in self.counts:
                continue
            if pred_area[p] < min_area:
                continue
            if restricted:
                is_fp = on_counted[p] > 0.5 * pred_area[p]
            else:
                is_fp = (pred_void[p] + on_ignored[p]) <= 0.5 * pred_area[p]
            if is_fp:
                self.counts[int(pred_classes[p])].fp += 1

    def result(self) -> PQResult:
        per_class: dict[str, dict[str, float]] = {}
        vals = []
        for i, c in enumerate(self.thing_classes):
            cc = self.counts[int(c)]
            name = self.names[i] if i < len(self.names) else str(c)
            r = cc.pq()
            if r is None:
                continue
            vals.append(r)
            per_class[name] = {"pq": r[0], "sq": r[1], "rq": r[2], "tp": cc.tp, "fp": cc.fp, "fn": cc.fn}
        arr = np.asarray(vals) if vals else np.full((1, 3), np.nan)
        tot = {k: sum(getattr(cc, k) for cc in self.counts.values()) for k in ("tp", "fp", "fn")}
        return PQResult(pq=float(arr[:, 0].mean()), sq=float(arr[:, 1].mean()), rq=float(arr[:, 2].mean()),
                        per_class=per_class, counts=tot)


def pq_things(gt_ids, gt_classes, pred_ids, pred_classes, thing_classes, **kw) -> PQResult:
    """PQ of one image (convenience for tests and notebooks)."""
    acc = PQAccumulator(thing_classes)
    acc.add(gt_ids, gt_classes, pred_ids, pred_classes, **kw)
    return acc.result()


class MaskAP:
    """COCO mask AP (pycocotools, iouType "segm") over images added one at a time.

    Ground truth and detections are RLE-encoded per instance; category ids are the label-map
    classes. Unlabelled (void) pixels are not modelled: COCO has no void, only crowd regions.
    """

    def __init__(self, thing_classes: Sequence[int], names: Sequence[str] = ()) -> None:
        self.thing_classes = [int(c) for c in thing_classes]
        self.names = list(names) or [str(c) for c in thing_classes]
        self.images: list[dict[str, Any]] = []
        self.gt: list[dict[str, Any]] = []
        self.dt: list[dict[str, Any]] = []

    @staticmethod
    def _rle(mask: np.ndarray) -> dict[str, Any]:
        from pycocotools import mask as mask_util

        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        return rle

    def add(self, gt_ids: np.ndarray, gt_classes: np.ndarray, pred_ids: np.ndarray,
            pred_classes: np.ndarray, scores: np.ndarray) -> None:
        image_id = len(self.images) + 1
        h, w = gt_ids.shape
        self.images.append({"id": image_id, "height": h, "width": w})
        for ids, classes, out, sc in ((gt_ids, gt_classes, self.gt, None), (pred_ids, pred_classes, self.dt, scores)):
            for k, sl in enumerate(ndi.find_objects(np.asarray(ids, np.int32), max_label=len(classes) - 1), start=1):
                if sl is None or int(classes[k]) not in self.thing_classes:
                    continue
                mask = np.zeros((h, w), bool)
                mask[sl] = ids[sl] == k
                rle = self._rle(mask)
                area = float(mask.sum())
                ys, xs = sl
                rec = {"id": len(out) + 1, "image_id": image_id, "category_id": int(classes[k]),
                       "segmentation": rle, "area": area,
                       "bbox": [xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start]}
                if sc is None:
                    rec["iscrowd"] = 0
                else:
                    rec["score"] = float(sc[k])
                out.append(rec)

    def result(self) -> dict[str, float]:
        """{"ap": AP@[.5:.95], "ap50", "ap75"} (NaN when there is no ground truth)."""
        if not self.gt:
            return {"ap": float("nan"), "ap50": float("nan"), "ap75": float("nan")}
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        gt = COCO()
        gt.dataset = {"images": self.images, "annotations": self.gt,
                      "categories": [{"id": c, "name": n} for c, n in zip(self.thing_classes, self.names)]}
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
            if not self.dt:
                return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
            dt = gt.loadRes([dict(d) for d in self.dt])
            ev = COCOeval(gt, dt, iouType="segm")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return {"ap": float(ev.stats[0]), "ap50": float(ev.stats[1]), "ap75": float(ev.stats[2])}


__all__ = ["EIGHT", "MaskAP", "PQAccumulator", "PQResult", "pq_things", "touching_instances"]

"""COCO box mAP with pycocotools: mAP50-95, mAP50 and per-class AP.

Detections are COCO result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
in original-image pixels; the ground truth is a COCO json path, a COCO-format dict or a
``pycocotools.coco.COCO``. Evaluation is restricted to the images actually evaluated
(``image_ids``), as YOLOv5's val.py does for COCO, so a subset run is not charged for the images
it never saw. mAP50-95 is ``COCOeval.stats[0]`` (area all, 100 detections per image per class),
mAP50 ``stats[1]``; per-class AP averages the same precision array over IoU thresholds and recall
points for one category (-1 entries, i.e. classes without ground truth, are n/a).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from zoo.det.postprocess import xyxy2xywh


@dataclass
class DetScores:
    map: float  # mAP@[.50:.95]
    map50: float
    map75: float
    per_class_ap: dict[str, float | None]  # AP@[.50:.95] per class name; None: no ground truth
    per_class_ap50: dict[str, float | None]
    images: int
    detections: int
    stats: list[float] = field(default_factory=list)  # the 12 COCOeval summary numbers

    def as_dict(self) -> dict[str, Any]:
        return {"map": self.map, "map50": self.map50, "map75": self.map75,
                "per_class_ap": self.per_class_ap, "per_class_ap50": self.per_class_ap50,
                "images": self.images, "detections": self.detections, "coco_stats": self.stats}


def detections_to_coco(det: torch.Tensor | np.ndarray, image_id: int,
                       category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """(K, 6) ``[x0, y0, x1, y1, score, class]`` in original pixels -> COCO result dicts."""
    d = det.detach().cpu().double().numpy() if isinstance(det, torch.Tensor) else np.asarray(det, np.float64)
    if not len(d):
        return []
    xywh = xyxy2xywh(torch.from_numpy(d[:, :4])).numpy()
    xywh[:, :2] -= xywh[:, 2:] / 2  # centre -> top-left corner
    cats = np.asarray(category_ids)[d[:, 5].astype(np.int64)]
    return [{"image_id": int(image_id), "category_id": int(c), "bbox": b, "score": float(s)}
            for b, s, c in zip(xywh.tolist(), d[:, 4].tolist(), cats.tolist())]


def load_coco_gt(gt: Any):
    """A ``pycocotools.coco.COCO`` from a json path, a COCO-format dict or a COCO object."""
    from pycocotools.coco import COCO

    if isinstance(gt, COCO):
        return gt
    with contextlib.redirect_stdout(io.StringIO()):  # "loading annotations ... Done"
        if isinstance(gt, (str, Path)):
            return COCO(str(gt))
        coco = COCO()
        coco.dataset = copy.deepcopy(dict(gt))
        coco.createIndex()
        return coco


def coco_map(detections: Iterable[dict[str, Any]], gt: Any, *,
             image_ids: Sequence[int] | None = None,
             class_names: Sequence[str] | None = None,
             category_ids: Sequence[int] | None = None, verbose: bool = False) -> DetScores:
    """Score ``detections`` against ``gt`` with pycocotools (see the module docstring).

    ``category_ids`` (in class-index order, with ``class_names``) name the per-class results;
    default: every category of the ground truth, named as there. No detections at all gives
    zeros and a warning instead of pycocotools' exception.
    """
    from pycocotools.cocoeval import COCOeval

    coco_gt = load_coco_gt(gt)
    dets = list(detections)
    img_ids = sorted(int(i) for i in (image_ids if image_ids is not None else coco_gt.getImgIds()))
    unknown = set(img_ids) - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"{len(unknown)} evaluated image id(s) are not in the ground truth "
                         f"(e.g. {sorted(unknown)[:3]}); wrong annotation file?")
    if category_ids is None:
        category_ids = sorted(coco_gt.getCatIds())
    if class_names is None:
        class_names = [coco_gt.cats[c]["name"] if c in coco_gt.cats else str(c)
                       for c in category_ids]
    if len(class_names) != len(category_ids):
        raise ValueError(f"{len(class_names)} class names for {len(category_ids)} category ids")
    per_none = {n: None for n in class_names}
    if not dets:
        warnings.warn("no detections to evaluate: mAP is 0", RuntimeWarning, stacklevel=2)
        return DetScores(map=0.0, map50=0.0, map75=0.0, per_class_ap=dict(per_none),
                         per_class_ap50=dict(per_none), images=len(img_ids), detections=0,
                         stats=[0.0] * 12)
    stray = {d["image_id"] for d in dets} - set(img_ids)
    if stray:  # pycocotools would silently ignore them; a caller mixing datasets should know
        raise ValueError(f"detections for {len(stray)} image id(s) outside the evaluated images "
                         f"(e.g. {sorted(stray)[:3]})")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))  # loadRes adds keys to the dicts
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if verbose:
        print(out.getvalue(), end="")
    stats = [float(s) for s in ev.stats]
    # precision: [T IoU thresholds, R recall points, K categories, A areas, M maxDets]
    precision = ev.eval["precision"]
    k_of = {c: k for k, c in enumerate(ev.params.catIds)}
    ap, ap50 = {}, {}
    for name, cid in zip(class_names, category_ids):
        k = k_of.get(cid)
        p = precision[:, :, k, 0, -1] if k is not None else np.full((1, 1), -1.0)
        ap[name] = _mean_valid(p)
        ap50[name] = _mean_valid(p[:1])
    return DetScores(map=max(stats[0], 0.0), map50=max(stats[1], 0.0), map75=max(stats[2], 0.0),
                     per_class_ap=ap, per_class_ap50=ap50, images=len(img_ids),
                     detections=len(dets), stats=stats)


def _mean_valid(p: np.ndarray) -> float | None:
    v = p[p > -1]
    return float(v.mean()) if v.size else None


def write_detections(path: str | Path, detections: Sequence[dict[str, Any]]) -> Path:
    """Detections as a COCO results json (what the COCO evaluation server takes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(detections)))
    return path

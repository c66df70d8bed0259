"""Detector post-processing: confidence filtering, class-aware NMS, mapping boxes back.

Input is the decoded prediction tensor of a YOLO-style head, (B, N, 5 + nc):
``[cx, cy, w, h]`` in input pixels, objectness probability, class probabilities. The rules
follow YOLOv5's ``non_max_suppression`` (facts from its ``utils/general.py``; the code is our
own): candidates need ``obj > conf_thres``; the score of a (box, class) pair is ``obj * cls``
and must also exceed ``conf_thres``; ``multi_label`` keeps every class above the threshold
(several detections per box, used for mAP), otherwise only the best class; at most ``max_nms``
highest-scoring candidates enter NMS; NMS is per class (`torchvision.ops.batched_nms`); at most
``max_det`` detections per image are kept, highest score first.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torchvision.ops import batched_nms

__all__ = ["NMSConfig", "MAP_NMS", "DEPLOY_NMS", "NMS_PRESETS", "non_max_suppression",
           "xywh2xyxy", "xyxy2xywh", "scale_boxes", "clip_boxes"]


@dataclass(frozen=True)
class NMSConfig:
    conf_thres: float = 0.25
    iou_thres: float = 0.45
    max_det: int = 300
    multi_label: bool = False
    max_nms: int = 30000  # candidates entering NMS (YOLOv5's cap against pathological inputs)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# mAP: a low threshold and every class above it, so the precision-recall curve is complete
# (YOLOv5 val.py / README numbers: conf 0.001, IoU 0.65, 300 detections, multi-label).
MAP_NMS = NMSConfig(conf_thres=0.001, iou_thres=0.65, max_det=300, multi_label=True)
# Deployment: what detect.py uses to draw boxes (conf 0.25, IoU 0.45, best class only).
DEPLOY_NMS = NMSConfig(conf_thres=0.25, iou_thres=0.45, max_det=300, multi_label=False)
NMS_PRESETS = {"map": MAP_NMS, "deploy": DEPLOY_NMS}


def xywh2xyxy(x: torch.Tensor) -> torch.Tensor:
    """[cx, cy, w, h] -> [x0, y0, x1, y1] along the last axis."""
    half = x[..., 2:4] / 2
    return torch.cat((x[..., 0:2] - half, x[..., 0:2] + half), dim=-1)


def xyxy2xywh(x: torch.Tensor) -> torch.Tensor:
    """[x0, y0, x1, y1] -> [cx, cy, w, h] along the last axis."""
    return torch.cat(((x[..., 0:2] + x[..., 2:4]) / 2, x[..., 2:4] - x[..., 0:2]), dim=-1)


def non_max_suppression(
    pred: torch.Tensor,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    max_det: int = 300,
    multi_label: bool = False,
    classes: Sequence[int] | None = None,
    *,
    max_nms: int = 30000,
) -> list[torch.Tensor]:
    """Per image a (K, 6) float tensor ``[x0, y0, x1, y1, score, class]``, best score first.

    ``pred`` is (B, N, 5 + nc) decoded predictions (see the module docstring); a (N, 5 + nc)
    tensor is taken as one image. ``classes`` keeps only those class indices.
    """
    if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
        raise ValueError(f"conf_thres and iou_thres must be in [0, 1], got {conf_thres}, {iou_thres}")
    if isinstance(pred, (list, tuple)):  # (inference output, raw maps) from some heads
        pred = pred[0]
    if pred.ndim == 2:
        pred = pred.unsqueeze(0)
    if pred.ndim != 3 or pred.shape[-1] < 6:
        raise ValueError(f"expected (B, N, 5 + nc) predictions, got shape {tuple(pred.shape)}")
    nc = pred.shape[-1] - 5
    multi_label = multi_label and nc > 1
    keep_classes = (torch.as_tensor(list(classes), device=pred.device)
                    if classes is not None else None)
    out: list[torch.Tensor] = []
    for x in pred:  # one image at a time: candidate counts differ per image
        x = x[x[:, 4] > conf_thres]
        if not x.shape[0]:
            out.append(x.new_zeros((0, 6)))
            continue
        scores = x[:, 5:].float() * x[:, 4:5].float()  # obj * cls
        boxes = xywh2xyxy(x[:, :4].float())
        if multi_label:
            i, j = (scores > conf_thres).nonzero(as_tuple=True)
            det = torch.cat((boxes[i], scores[i, j, None], j[:, None].float()), dim=1)
        else:
            best, j = scores.max(dim=1, keepdim=True)
            det = torch.cat((boxes, best, j.float()), dim=1)[best[:, 0] > conf_thres]
        if keep_classes is not None:
            det = det[(det[:, 5:6] == keep_classes).any(dim=1)]
        if not det.shape[0]:
            out.append(det.new_zeros((0, 6)))
            continue
        if det.shape[0] > max_nms:
            det = det[det[:, 4].topk(max_nms).indices]
        kept = batched_nms(det[:, :4], det[:, 4], det[:, 5].long(), iou_thres)[:max_det]
        out.append(det[kept])
    return out


def clip_boxes(boxes: torch.Tensor | np.ndarray, shape: tuple[int, int]):
    """Clip xyxy boxes in place to an (h, w) image; returns them."""
    h, w = shape
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0::2] = boxes[..., 0::2].clamp(0, w)
        boxes[..., 1::2] = boxes[..., 1::2].clamp(0, h)
    else:
        boxes[..., 0::2] = boxes[..., 0::2].clip(0, w)
        boxes[..., 1::2] = boxes[..., 1::2].clip(0, h)
    return boxes


def scale_boxes(boxes: torch.Tensor | np.ndarray, info: Any, *, clip: bool = True,
                yolov5_compat: bool = False):
    """Network-input xyxy boxes -> original-image pixels, from a `LetterboxInfo`.

    Returns a new array/tensor. By default the exact inverse of the letterbox: subtract the
    integer offset at which the image was placed, divide by the per-axis gain. With
    ``yolov5_compat`` it does what YOLOv5's ``scale_boxes`` does instead: subtract the nominal
    half padding (up to 0.5 px more than the image's real offset when the padding is odd) and
    divide both axes by the height gain; only for comparing with reference numbers.
    """
    b = boxes.clone() if isinstance(boxes, torch.Tensor) else np.array(boxes, dtype=np.float64)
    if yolov5_compat:
        (py, px), (gy, gx) = info.half_pad, (info.gain[0], info.gain[0])
    else:
        (py, px), (gy, gx) = info.offset, info.gain
    b[..., [0, 2]] = (b[..., [0, 2]] - px) / gx
    b[..., [1, 3]] = (b[..., [1, 3]] - py) / gy
    return clip_boxes(b, info.orig_shape) if clip else b

"""The YOLOv5 training loss: anchor matching, CIoU box loss, IoU-target objectness, class BCE.

Facts from ultralytics/yolov5 v6.x-v7.0 (``utils/loss.py`` ``ComputeLoss``, ``train.py``,
``data/hyps/hyp.scratch-low.yaml``), read for the rules only; the code here is our own.

Targets are one (M, 6) float tensor per batch, ``[image_index, class, cx, cy, w, h]`` with the
box normalised to the network input (0..1), as `zoo.det.augment.detection_collate` makes it.

Matching (per output level, anchors in grid units = pixels / stride):

* a target goes to every anchor whose width and height ratios are both within ``anchor_t``
  (4.0): ``max(r, 1/r) < anchor_t`` for r = target wh / anchor wh (no IoU threshold);
* positives are the cell containing the box centre plus the two nearest neighbouring cells,
  one along x and one along y: the left cell when the centre lies in the left half of its cell,
  the right one otherwise (likewise up / down), never leaving the grid and never for a centre
  in the outermost cell row/column (the reference's ``gxy > 1`` / ``gxi > 1`` rule). So a
  matched anchor has up to 3 positives; the decoded centre ``2 sigmoid - 0.5`` spans
  (-0.5, 1.5) cells, which is what lets a neighbour cell reach the true centre.

Loss terms (per level i, summed over levels):

* box: mean over positives of ``1 - CIoU(pred, target)``; the prediction is decoded as in
  `zoo.det.yolov5.Detect` (xy = 2 s - 0.5 relative to the cell, wh = (2 s)^2 * anchor). CIoU
  (Zheng et al. 2020) is `ciou` below, checked against ``torchvision.ops.complete_box_iou``;
* objectness: BCE over every cell and anchor against the detached CIoU clamped at 0
  (``gr = 1``: the IoU itself is the target, not 1), weighted per level by ``balance``
  = [4.0, 1.0, 0.4] for P3, P4, P5 (ultralytics/yolov5#2026);
* class: BCE over the positives' class logits (skipped with one class), targets ``1 - eps/2``
  and ``eps/2`` with label smoothing eps (the reference's ``smooth_BCE``);
* gains box 0.05, obj 1.0, cls 0.5 (hyp.scratch-low), which ``train.py`` rescales for the
  head and the data: box x 3/nl, cls x nc/80 x 3/nl, obj x (img_size/640)^2 x 3/nl
  (`LossHyp.scaled`).

The returned loss is ``(box + obj + cls) * batch_size`` like the reference (so the gradient
scale, and the tuned lr 0.01, assume a sum over images), together with the three detached
parts for logging.

Class weights (issue #8): an optional [nc] tensor (e.g. `zoo.class_weights` effective-number
weights from boxes per class) multiplies each positive's class-BCE terms by the weight of its
target class, the sigmoid form of the class-balanced loss of Cui et al. (CVPR 2019): alpha_y
times the sum of the C one-vs-all terms.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LossHyp", "LevelTargets", "YOLOv5Loss", "ciou", "build_targets"]


@dataclass(frozen=True)
class LossHyp:
    """Loss hyper-parameters (hyp.scratch-low.yaml defaults, before `scaled`)."""

    box: float = 0.05
    obj: float = 1.0
    cls: float = 0.5
    anchor_t: float = 4.0
    label_smoothing: float = 0.0
    balance: tuple[float, ...] = (4.0, 1.0, 0.4)  # objectness weight of P3, P4, P5
    gr: float = 1.0  # objectness target = (1 - gr) + gr * IoU

    def scaled(self, *, num_classes: int, img_size: int, num_levels: int = 3) -> "LossHyp":
        """The gains as ``train.py`` adapts them to the head (levels), classes and image size."""
        k = 3 / num_levels
        return replace(self, box=self.box * k, cls=self.cls * num_classes / 80 * k,
                       obj=self.obj * (img_size / 640) ** 2 * k)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LevelTargets(NamedTuple):
    """The positives of one output level (P positives)."""

    image: torch.Tensor   # (P,) long: batch index
    anchor: torch.Tensor  # (P,) long: anchor index within the level
    gy: torch.Tensor      # (P,) long: cell row
    gx: torch.Tensor      # (P,) long: cell column
    box: torch.Tensor     # (P, 4): [x, y] relative to the cell's corner, [w, h], grid units
    anchor_wh: torch.Tensor  # (P, 2): the matched anchor, grid units
    cls: torch.Tensor     # (P,) long: class index


def ciou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU (Zheng et al., AAAI 2020) of paired [cx, cy, w, h] boxes (N, 4) -> (N,).

    ``IoU - rho^2 / c^2 - alpha v`` with rho the centre distance, c the diagonal of the smallest
    enclosing box, ``v = 4 / pi^2 (atan(w2 / h2) - atan(w1 / h1))^2`` and
    ``alpha = v / (1 - IoU + v)`` held constant in the backward pass (as the CIoU and YOLOv5
    references do). Equals ``torchvision.ops.complete_box_iou`` (tested) but works on centre /
    size directly: a near-zero predicted box (sigmoid underflow early in training) would lose
    its size to rounding in corner coordinates and give 0/0 in the aspect term; heights are
    clamped at ``eps`` for the same reason.
    """
    c1, c2 = box1[..., 0:2], box2[..., 0:2]
    wh1, wh2 = box1[..., 2:4], box2[..., 2:4]
    lo1, hi1, lo2, hi2 = c1 - wh1 / 2, c1 + wh1 / 2, c2 - wh2 / 2, c2 + wh2 / 2
    inter = (torch.minimum(hi1, hi2) - torch.maximum(lo1, lo2)).clamp(min=0).prod(dim=-1)
    union = wh1.prod(dim=-1) + wh2.prod(dim=-1) - inter
    iou = inter / (union + eps)
    enclose = torch.maximum(hi1, hi2) - torch.minimum(lo1, lo2)
    diag2 = enclose.pow(2).sum(dim=-1) + eps
    rho2 = (c1 - c2).pow(2).sum(dim=-1)
    v = (4 / math.pi ** 2) * (torch.atan(wh2[..., 0] / wh2[..., 1].clamp(min=eps))
                              - torch.atan(wh1[..., 0] / wh1[..., 1].clamp(min=eps))).pow(2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return iou - (rho2 / diag2 + alpha * v)


# Neighbour offsets (dx, dy) in cells: own, left, up, right, down.
_OFFSETS = ((0, 0), (-1, 0), (0, -1), (1, 0), (0, 1))


def build_targets(targets: torch.Tensor, anchors: torch.Tensor,
                  grid_shapes: Sequence[tuple[int, int]], anchor_t: float = 4.0,
                  ) -> list[LevelTargets]:
    """Assign (M, 6) normalised targets to anchors and cells of each level (module docstring).

    ``anchors`` is (nl, na, 2) in grid units (`Detect.anchors`), ``grid_shapes`` the (H, W) of
    each level's map.
    """
    device = targets.device
    out: list[LevelTargets] = []
    for i, (h, w) in enumerate(grid_shapes):
        anc = anchors[i].to(device=device, dtype=torch.float32)  # (na, 2)
        gain = torch.tensor([w, h, w, h], device=device, dtype=torch.float32)
        t = targets[:, 2:6].float() * gain  # grid units: cx, cy, w, h
        if t.shape[0]:
            r = t[None, :, 2:4] / anc[:, None, :]  # (na, M, 2)
            match = torch.maximum(r, 1 / r).amax(dim=2) < anchor_t
            a_idx, t_idx = match.nonzero(as_tuple=True)
        else:
            a_idx = t_idx = torch.zeros(0, dtype=torch.long, device=device)
        gxy = t[t_idx, 0:2]
        frac = gxy - gxy.floor()
        inner_lo = gxy > 1  # the reference never steps into the outermost row / column
        inner_hi = (gain[0:2] - gxy) > 1
        use = [
            torch.ones_like(t_idx, dtype=torch.bool),
            (frac[:, 0] < 0.5) & inner_lo[:, 0],   # left
            (frac[:, 1] < 0.5) & inner_lo[:, 1],   # up
            (frac[:, 0] > 0.5) & inner_hi[:, 0],   # right
            (frac[:, 1] > 0.5) & inner_hi[:, 1],   # down
        ]
        sel_t, sel_a, cells = [], [], []
        for (dx, dy), m in zip(_OFFSETS, use):
            sel_t.append(t_idx[m])
            sel_a.append(a_idx[m])
            cells.append(gxy[m].floor() + torch.tensor([dx, dy], device=device, dtype=gxy.dtype))
        ti, ai = torch.cat(sel_t), torch.cat(sel_a)
        cell = torch.cat(cells)
        gx = cell[:, 0].long().clamp_(0, w - 1)
        gy = cell[:, 1].long().clamp_(0, h - 1)
        box = torch.cat((t[ti, 0:2] - torch.stack((gx, gy), dim=1).to(t.dtype), t[ti, 2:4]), dim=1)
        out.append(LevelTargets(image=targets[ti, 0].long(), anchor=ai, gy=gy, gx=gx, box=box,
                                anchor_wh=anc[ai], cls=targets[ti, 1].long()))
    return out


class YOLOv5Loss(nn.Module):
    """``loss, parts = criterion(maps, targets)`` for the raw training maps of `YOLOv5`.

    ``maps``: list of (B, na, H, W, 5 + nc) tensors (the network in train mode); ``targets``:
    (M, 6) ``[image, class, cx, cy, w, h]`` normalised. ``hyp`` should already be `scaled`.
    ``class_weights``: optional [nc] per-class factors on the class BCE (module docstring).
    Returns the total (times the batch size) and a detached (3,) tensor [box, obj, cls].
    """

    def __init__(self, anchors: torch.Tensor, num_classes: int, hyp: LossHyp | None = None,
                 class_weights: torch.Tensor | Sequence[float] | None = None) -> None:
        super().__init__()
        self.hyp = hyp or LossHyp()
        self.nc = int(num_classes)
        self.register_buffer("anchors", anchors.detach().clone().float())  # (nl, na, 2) grid units
        if len(self.hyp.balance) != self.anchors.shape[0]:
            raise ValueError(f"{len(self.hyp.balance)} objectness balance weights for "
                             f"{self.anchors.shape[0]} output levels")
        if class_weights is not None:
            cw = torch.as_tensor(class_weights, dtype=torch.float32).reshape(-1)
            if cw.numel() != self.nc:
                raise ValueError(f"{cw.numel()} class weights for {self.nc} classes")
        else:
            cw = None
        self.register_buffer("class_weights", cw)

    @classmethod
    def for_model(cls, model: nn.Module, hyp: LossHyp | None = None, **kw: Any) -> "YOLOv5Loss":
        """A loss using the anchors and class count of a `YOLOv5` (or its DDP wrapper)."""
        net = getattr(model, "module", model)
        detect = net.detect
        return cls(detect.anchors, detect.nc, hyp, **kw)

    def forward(self, maps: Sequence[torch.Tensor], targets: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        hyp = self.hyp
        device = maps[0].device
        targets = targets.to(device)
        levels = build_targets(targets, self.anchors, [tuple(p.shape[2:4]) for p in maps],
                               hyp.anchor_t)
        cp, cn = 1.0 - 0.5 * hyp.label_smoothing, 0.5 * hyp.label_smoothing
        lbox = maps[0].new_zeros(())
        lobj = maps[0].new_zeros(())
        lcls = maps[0].new_zeros(())
        for p, lt, balance in zip(maps, levels, hyp.balance):
            p = p.float()
            tobj = torch.zeros(p.shape[:4], dtype=p.dtype, device=device)
            n = lt.image.shape[0]
            if n:
                ps = p[lt.image, lt.anchor, lt.gy, lt.gx]  # (n, 5 + nc)
                pxy = ps[:, 0:2].sigmoid() * 2 - 0.5
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * lt.anchor_wh
                iou = ciou(torch.cat((pxy, pwh), dim=1), lt.box)
                lbox = lbox + (1.0 - iou).mean()
                score = iou.detach().clamp(min=0).to(tobj.dtype)
                tobj[lt.image, lt.anchor, lt.gy, lt.gx] = (1.0 - hyp.gr) + hyp.gr * score
                if self.nc > 1:
                    t = torch.full_like(ps[:, 5:], cn)
                    t[torch.arange(n, device=device), lt.cls] = cp
                    bce = F.binary_cross_entropy_with_logits(ps[:, 5:], t, reduction="none")
                    if self.class_weights is not None:
                        bce = bce * self.class_weights[lt.cls].unsqueeze(1)
                    lcls = lcls + bce.mean()
            lobj = lobj + balance * F.binary_cross_entropy_with_logits(p[..., 4], tobj)
        lbox, lobj, lcls = lbox * hyp.box, lobj * hyp.obj, lcls * hyp.cls
        bs = maps[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.stack((lbox, lobj, lcls)).detach()

"""Segmentation losses used by the training recipes.

`build_loss(name, *, ignore_index, weight=None, **kwargs)` builds one of:

* ``ce``: PyTorch cross-entropy. With ``weight`` its mean divides by the sum of the target
  pixels' weights (``F.cross_entropy`` semantics), which cancels a uniform rescaling of the weights.
* ``cb_ce``: class-weighted cross-entropy with the class-balanced loss paper's reduction: the
  per-pixel loss w_y * CE is averaged over the *number* of labelled pixels (not over sum w_y).
* ``cb_focal``: class-balanced softmax focal loss, alpha_t = w_y, ``gamma`` (default 2.0).
* ``ohem``: online hard example mining CE (DDRNet/HRNet), optionally class-weighted.
* ``lovasz``: Lovasz-softmax (Berman et al. 2018), a Jaccard surrogate averaged over the classes
  present in the batch; ``weight`` makes that a weighted average over classes.

Every loss takes logits [N, C, H, W] and targets [N, H, W] (``ignore_index`` = unlabelled), is
computed in float32, and returns a zero that keeps the graph when no pixel is labelled.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

LOSSES = ("ce", "cb_ce", "cb_focal", "ohem", "lovasz")


def _weight_buffer(module: nn.Module, weight) -> None:
    w = None if weight is None else torch.as_tensor(weight, dtype=torch.float32).detach().clone()
    if w is not None and (w.dim() != 1 or not torch.isfinite(w).all() or (w < 0).any()):
        raise ValueError("class weights must be a 1-D tensor of finite, non-negative values")
    module.register_buffer("weight", w)


def _zero(logits: torch.Tensor) -> torch.Tensor:
    return logits.sum() * 0.0  # keeps the graph (DDP needs every parameter used)


class CrossEntropy(nn.CrossEntropyLoss):
    """``nn.CrossEntropyLoss`` that returns a graph-keeping 0 instead of NaN when every pixel is
    ignored (PyTorch's mean divides 0 by 0 then)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not (target != self.ignore_index).any():
            return _zero(logits)
        return super().forward(logits, target)


class WeightedCrossEntropy(nn.Module):
    """Class-weighted CE, reduced as in Cui et al.: mean over labelled pixels of w_y * CE."""

    def __init__(self, ignore_index: int = 255, weight=None):
        super().__init__()
        self.ignore_index = ignore_index
        _weight_buffer(self, weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        valid = target != self.ignore_index
        n = valid.sum()
        if n == 0:
            return _zero(logits)
        pixel = F.cross_entropy(logits, target, weight=self.weight, ignore_index=self.ignore_index,
                                reduction="none")  # ignored pixels are 0
        return pixel.sum() / n


class ClassBalancedFocal(nn.Module):
    """Softmax focal loss -alpha_y (1 - p_y)^gamma log p_y, mean over labelled pixels.

    alpha = ``weight`` (the class-balanced weights; None = 1). (1 - p_y) is computed as
    -expm1(log p_y) and clamped away from 0 so that gamma < 1 has a finite gradient at p_y = 1.
    """

    def __init__(self, ignore_index: int = 255, weight=None, gamma: float = 2.0):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.ignore_index = ignore_index
        self.gamma = float(gamma)
        _weight_buffer(self, weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        valid = target != self.ignore_index
        n = valid.sum()
        if n == 0:
            return _zero(logits)
        safe = torch.where(valid, target, torch.zeros_like(target))
        logp = F.log_softmax(logits, dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
        if self.gamma > 0:
            one_minus_p = (-torch.expm1(logp)).clamp_min(1e-12)
            loss = -one_minus_p.pow(self.gamma) * logp
        else:
            loss = -logp
        if self.weight is not None:
            loss = loss * self.weight[safe]
        return (loss * valid).sum() / n


class OhemCrossEntropy(nn.Module):
    """Online hard example mining cross-entropy (the DDRNet/HRNet recipe).

    Keeps the pixels whose predicted probability of the true class is below `thresh`, but never
    fewer than `min_kept` pixels (the hardest ones; all labelled pixels if there are fewer), so
    easy batches still give a gradient. With ``weight`` each kept pixel's CE is multiplied by its
    class weight and the mean is over the kept pixels (the paper-style reduction).
    ``last_kept`` records how many pixels the last call kept.
    """

    def __init__(self, ignore_index: int = 255, thresh: float = 0.9, min_kept: int = 131072, weight=None):
        super().__init__()
        self.ignore_index = ignore_index
        self.thresh = thresh
        self.min_kept = max(1, int(min_kept))
        self.last_kept = 0
        _weight_buffer(self, weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        pixel_loss = F.cross_entropy(
            logits, target, weight=self.weight, ignore_index=self.ignore_index, reduction="none"
        ).reshape(-1)
        valid = target.reshape(-1) != self.ignore_index
        if not valid.any():
            self.last_kept = 0
            return _zero(logits)
        losses = pixel_loss[valid]
        with torch.no_grad():
            safe = torch.where(target == self.ignore_index, torch.zeros_like(target), target)
            prob = F.softmax(logits, dim=1).gather(1, safe.unsqueeze(1)).reshape(-1)[valid]
            keep = prob < self.thresh
            need = min(self.min_kept, prob.numel())
            if int(keep.sum()) < need:  # too few hard pixels: the `need` least confident ones
                keep = torch.zeros_like(keep)
                keep[torch.topk(prob, need, largest=False).indices] = True
            self.last_kept = int(keep.sum())
        return losses[keep].mean()


def _lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors."""
    gts = fg_sorted.sum()
    intersection = gts - fg_sorted.cumsum(0)
    union = gts + (1.0 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if fg_sorted.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


class LovaszSoftmax(nn.Module):
    """Lovasz-softmax loss (Berman, Triki, Blaschko, CVPR 2018), written from the paper.

    ``classes="present"`` averages over the classes present in the (valid) targets, "all" over
    every class. ``per_image`` computes the loss image by image and averages. ``weight`` turns the
    average over classes into a weighted average.
    """

    def __init__(self, ignore_index: int = 255, weight=None, classes: str = "present",
                 per_image: bool = False):
        super().__init__()
        if classes not in ("present", "all"):
            raise ValueError(f"lovasz classes must be 'present' or 'all', got {classes!r}")
        self.ignore_index = ignore_index
        self.classes = classes
        self.per_image = per_image
        _weight_buffer(self, weight)

    def _flat(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        # probs [P, C], labels [P] (valid only)
        C = probs.shape[1]
        terms, ws = [], []
        for c in range(C):
            fg = (labels == c).float()
            if self.classes == "present" and fg.sum() == 0:
                continue
            errors = (fg - probs[:, c]).abs()
            errors_sorted, perm = torch.sort(errors, descending=True)
            terms.append(torch.dot(errors_sorted, _lovasz_grad(fg[perm])))
            ws.append(self.weight[c] if self.weight is not None else probs.new_tensor(1.0))
        if not terms:
            return None
        t, w = torch.stack(terms), torch.stack(ws).to(probs)
        if w.sum() <= 0:
            return t.mean()
        return (t * w).sum() / w.sum()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        probs = F.softmax(logits, dim=1)
        C = probs.shape[1]
        batches = [(probs[i:i + 1], target[i:i + 1]) for i in range(probs.shape[0])] if self.per_image \
            else [(probs, target)]
        losses = []
        for p, t in batches:
            p = p.permute(0, 2, 3, 1).reshape(-1, C)
            t = t.reshape(-1)
            valid = t != self.ignore_index
            value = self._flat(p[valid], t[valid]) if valid.any() else None
            if value is not None:
                losses.append(value)
        if not losses:
            return _zero(logits)
        return torch.stack(losses).mean()


def build_loss(name: str, *, ignore_index: int = 255, weight=None, **kwargs) -> nn.Module:
    """A segmentation loss by name (see `LOSSES`); ``weight`` is an optional [C] class-weight tensor."""
    if name == "ohem":
        return OhemCrossEntropy(ignore_index=ignore_index, weight=weight, **kwargs)
    if name == "ce":
        if kwargs:
            raise TypeError(f"loss 'ce' takes no options, got {', '.join(sorted(kwargs))}")
        w = None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        return CrossEntropy(weight=w, ignore_index=ignore_index)
    if name == "cb_ce":
        return WeightedCrossEntropy(ignore_index=ignore_index, weight=weight, **kwargs)
    if name == "cb_focal":
        return ClassBalancedFocal(ignore_index=ignore_index, weight=weight, **kwargs)
    if name == "lovasz":
        return LovaszSoftmax(ignore_index=ignore_index, weight=weight, **kwargs)
    raise ValueError(f"unknown loss {name!r}; valid losses: {', '.join(LOSSES)}")
